//! The backend's state and rules, independent of transport: pools, workers, runs and the
//! run state machine, leases and heartbeat timeouts. HTTPS handlers, the MQTT inbound
//! path, the admin API and the in-process handle all call into [`Core`]. Every change is
//! made under one lock, recorded as events, persisted, and its outgoing MQTT messages
//! queued in order for the outbox.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use protocol::api::{
    error_codes, reason_codes, ClaimResponse, ErrorBody, Lease, LogAck, LogBatch, Reason,
    RegisterRequest, RegisterResponse, RunSpec, TransitionRequest, TransitionResponse,
    WorkerBinary,
};
use protocol::messages::{Incoming, ServerMessage, WorkerMessage, WorkerState};
use protocol::topics::{self, Direction};
use protocol::{Arch, RunState, PROTOCOL_VERSION};
use serde_json::json;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::binaries::{sha256_hex, BinaryContent};
use crate::clock::{Clock, Ids};
use crate::error::{BackendError, Result};
use crate::events::{kinds, EventLog, NewEvent};
use crate::faults::Faults;
use crate::pki::Pki;
use crate::store::{BinaryRecord, Pool, Run, State, Store, Worker};
use crate::ScheduleRun;

/// A message for one worker's readonly topic, queued for the outbox.
#[derive(Debug, Clone)]
pub(crate) struct Outbound {
    pub pool: String,
    pub worker: String,
    pub msg: ServerMessage,
}

/// An HTTPS error answer: status, protocol error body, optional `Retry-After`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub body: ErrorBody,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody::new(code, message),
            retry_after_s: None,
        }
    }
    fn conflict(message: impl Into<String>, current: RunState) -> ApiError {
        let mut e = ApiError::new(409, error_codes::CONFLICT, message);
        e.body.error.current_state = Some(current);
        e
    }
    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, error_codes::NOT_FOUND, message)
    }
    fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(403, error_codes::FORBIDDEN, message)
    }
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, error_codes::BAD_REQUEST, message)
    }
}

pub(crate) struct Timing {
    pub lease_ttl: Duration,
    pub heartbeat_interval: Duration,
    /// An unclaimed `run.scheduled` is re-sent (possibly elsewhere) after this long.
    pub offer_ttl: Duration,
}

/// What a [`Core`] is built from (besides the loaded state).
pub(crate) struct Parts {
    pub timing: Timing,
    pub clock: Clock,
    pub events: EventLog,
    pub store: Store,
    pub pki: Pki,
    pub seed: u64,
}

pub(crate) struct World {
    pub state: State,
    ids: Ids,
    leases: HashMap<String, Instant>,
    offers: HashMap<String, Instant>,
    heartbeats: HashMap<String, Instant>,
    /// Runs not yet terminal: what scheduling looks at, so its cost does not grow with
    /// the number of runs ever made. Derived from `state`, never persisted.
    active: BTreeSet<String>,
}

pub(crate) struct Core {
    pub timing: Timing,
    pub namespace: String,
    pub clock: Clock,
    pub events: EventLog,
    pub store: Store,
    pub pki: Pki,
    pub faults: Faults,
    pub timers: Notify,
    world: Mutex<World>,
    outbox: mpsc::UnboundedSender<Outbound>,
}

/// One change in progress (the world lock is held).
pub(crate) struct Tx<'a> {
    core: &'a Core,
    w: &'a mut World,
    out: Vec<Outbound>,
    dirty: bool,
    /// Runs changed in this transaction: only their files are rewritten.
    touched: BTreeSet<String>,
}

impl<'a> Tx<'a> {
    fn now_ms(&self) -> u64 {
        self.core.clock.now_ms()
    }
    fn new_id(&mut self) -> String {
        self.w.ids.next()
    }
    fn event(&self, ev: NewEvent) {
        self.core.events.record(self.now_ms(), ev);
    }
    fn send(&mut self, pool: &str, worker: &str, msg: ServerMessage) {
        self.out.push(Outbound {
            pool: pool.to_string(),
            worker: worker.to_string(),
            msg,
        });
    }
    pub(crate) fn set_endpoints(&mut self, e: crate::store::Endpoints) {
        self.w.state.endpoints = Some(e);
        self.dirty = true;
    }

    /// A run to change; marks it for saving.
    fn run_mut(&mut self, run_id: &str) -> Option<&mut Run> {
        let run = self.w.state.runs.get_mut(run_id)?;
        self.touched.insert(run_id.to_string());
        Some(run)
    }

    fn message_id(&mut self) -> String {
        self.new_id()
    }

    /// The runs not yet terminal.
    fn active_runs(&self) -> impl Iterator<Item = (&String, &Run)> {
        self.w
            .active
            .iter()
            .filter_map(|id| self.w.state.runs.get_key_value(id))
    }

    fn held(&self, worker: &str) -> usize {
        self.active_runs()
            .map(|(_, r)| r)
            .filter(|r| {
                r.worker.as_deref() == Some(worker)
                    && !r.state.is_terminal()
                    && r.state != RunState::Scheduled
            })
            .count()
    }

    /// Offers every queued run to a free worker of its pool: online, not drained, with
    /// capacity; idle workers first, newest first (as Spacelift schedules).
    pub(crate) fn dispatch(&mut self) {
        let queued: Vec<String> = self
            .active_runs()
            .filter(|(_, r)| r.state == RunState::Scheduled && r.offered_to.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        if queued.is_empty() {
            return;
        }
        // Each worker's load (held + offered), counted once rather than per queued run.
        let mut load: HashMap<String, usize> = HashMap::new();
        for (_, r) in self.active_runs() {
            let holder = if r.state == RunState::Scheduled {
                r.offered_to.as_deref()
            } else {
                r.worker.as_deref()
            };
            if let Some(w) = holder {
                *load.entry(w.to_string()).or_default() += 1;
            }
        }
        for run_id in queued {
            let pool = self.w.state.runs[&run_id].pool.clone();
            let mut best: Option<(bool, String)> = None;
            for w in self.w.state.workers.values() {
                if w.pool != pool
                    || !w.online
                    || w.drained
                    || w.reported_state == Some(WorkerState::Drained)
                {
                    continue;
                }
                let n = load.get(&w.ulid).copied().unwrap_or(0);
                if n >= w.capacity as usize {
                    continue;
                }
                let key = (n == 0, w.ulid.clone());
                if best.as_ref().is_none_or(|b| key > *b) {
                    best = Some(key);
                }
            }
            let Some((_, worker)) = best else { continue };
            *load.entry(worker.clone()).or_default() += 1;
            self.offer(&run_id, &pool, &worker);
        }
    }

    fn offer(&mut self, run_id: &str, pool: &str, worker: &str) {
        if let Some(run) = self.run_mut(run_id) {
            run.offered_to = Some(worker.to_string());
        }
        self.w.offers.insert(
            run_id.to_string(),
            Instant::now() + self.core.timing.offer_ttl,
        );
        let message_id = self.message_id();
        self.event(
            NewEvent::new(kinds::RUN_OFFERED)
                .pool(pool)
                .worker(worker)
                .run(run_id)
                .data(json!({ "message_id": message_id })),
        );
        self.send(
            pool,
            worker,
            ServerMessage::RunScheduled {
                message_id,
                run_ulid: run_id.to_string(),
            },
        );
        self.dirty = true;
    }

    /// Withdraws unclaimed offers made to `worker` so they can go elsewhere.
    fn withdraw_offers(&mut self, worker: &str) {
        for id in &self.w.active {
            let Some(run) = self.w.state.runs.get_mut(id) else {
                continue;
            };
            if run.state == RunState::Scheduled && run.offered_to.as_deref() == Some(worker) {
                run.offered_to = None;
                self.w.offers.remove(id);
                self.touched.insert(id.clone());
            }
        }
    }

    fn set_state(&mut self, run_id: &str, to: RunState, by: &str) {
        let Some(run) = self.run_mut(run_id) else {
            return;
        };
        let from = run.state;
        run.state = to;
        run.history.push(to);
        let (pool, worker) = (run.pool.clone(), run.worker.clone());
        let data = json!({
            "from": from,
            "to": to,
            "by": by,
            "exit_code": run.exit_code,
            "reason": run.reason,
            "worker_version": run.worker_version,
        });
        if to.is_terminal() {
            self.w.active.remove(run_id);
            self.w.leases.remove(run_id);
            self.w.offers.remove(run_id);
        }
        let mut ev = NewEvent::new(kinds::RUN_TRANSITION)
            .pool(pool)
            .run(run_id)
            .data(data);
        ev.worker = worker;
        self.event(ev);
        self.dirty = true;
    }

    /// Applies every deadline that has passed: expired leases fail their run as
    /// `worker_lost` (never rescheduled), unclaimed offers are re-made, silent workers
    /// go offline.
    pub(crate) fn expire(&mut self, now: Instant) {
        let due = |m: &HashMap<String, Instant>| -> Vec<String> {
            let mut v: Vec<String> = m
                .iter()
                .filter(|(_, t)| **t <= now)
                .map(|(k, _)| k.clone())
                .collect();
            v.sort();
            v
        };
        for run_id in due(&self.w.leases) {
            self.w.leases.remove(&run_id);
            let Some(run) = self.run_mut(&run_id) else {
                continue;
            };
            if run.state.is_terminal() || run.state == RunState::Scheduled {
                continue;
            }
            run.reason = Some(Reason::new(
                reason_codes::WORKER_LOST,
                "worker lost: the run's lease expired",
            ));
            let (pool, worker) = (run.pool.clone(), run.worker.clone());
            let mut ev = NewEvent::new(kinds::LEASE_EXPIRED)
                .pool(pool)
                .run(&run_id)
                .data(json!({ "state": run.state }));
            ev.worker = worker;
            self.event(ev);
            self.set_state(&run_id, RunState::Failed, "backend");
        }
        for run_id in due(&self.w.offers) {
            self.w.offers.remove(&run_id);
            let Some(run) = self.run_mut(&run_id) else {
                continue;
            };
            if run.state != RunState::Scheduled {
                continue;
            }
            let Some(worker) = run.offered_to.take() else {
                continue;
            };
            let pool = run.pool.clone();
            self.event(
                NewEvent::new(kinds::RUN_OFFER_EXPIRED)
                    .pool(pool)
                    .worker(worker)
                    .run(&run_id),
            );
            self.dirty = true;
        }
        for worker_id in due(&self.w.heartbeats) {
            self.w.heartbeats.remove(&worker_id);
            let Some(w) = self.w.state.workers.get_mut(&worker_id) else {
                continue;
            };
            if !w.online {
                continue;
            }
            w.online = false;
            let pool = w.pool.clone();
            self.event(
                NewEvent::new(kinds::WORKER_OFFLINE)
                    .pool(pool)
                    .worker(&worker_id)
                    .data(json!({ "reason": "heartbeat timeout" })),
            );
            self.withdraw_offers(&worker_id);
            self.dirty = true;
        }
        self.dispatch();
    }
}

fn worker_view_state(w: &Worker) -> &'static str {
    if !w.online {
        "OFFLINE"
    } else if w.drained || w.reported_state == Some(WorkerState::Drained) {
        "DRAINED"
    } else if w.reported_state == Some(WorkerState::Busy) {
        "BUSY"
    } else {
        "IDLE"
    }
}

impl Core {
    pub(crate) fn new(
        parts: Parts,
        mut state: State,
        outbox: mpsc::UnboundedSender<Outbound>,
    ) -> Core {
        let Parts {
            timing,
            clock,
            events,
            store,
            pki,
            seed,
        } = parts;
        state.generation += 1;
        // Each generation (backend start) gets its own ID epoch, a day apart, so IDs made
        // after a restart sort after those made before it.
        let ids = Ids::new(
            seed ^ state.generation.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            crate::clock::BASE_MS + state.generation * 86_400_000,
        );
        let mut leases = HashMap::new();
        let mut active = BTreeSet::new();
        let now = Instant::now();
        for w in state.workers.values_mut() {
            w.online = false;
        }
        for (id, run) in state.runs.iter_mut() {
            // Offers died with the old process; held runs get a fresh lease so a
            // reconnecting worker can renew it.
            run.offered_to = None;
            if !run.state.is_terminal() {
                active.insert(id.clone());
            }
            if !run.state.is_terminal() && run.state != RunState::Scheduled {
                leases.insert(id.clone(), now + timing.lease_ttl);
            }
        }
        Core {
            timing,
            namespace: topics::DEFAULT_NAMESPACE.to_string(),
            clock,
            events,
            store,
            pki,
            faults: Faults::default(),
            timers: Notify::new(),
            world: Mutex::new(World {
                state,
                ids,
                leases,
                offers: HashMap::new(),
                heartbeats: HashMap::new(),
                active,
            }),
            outbox,
        }
    }

    fn lock(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn record(&self, ev: NewEvent) {
        self.events.record(self.clock.now_ms(), ev);
    }

    /// Runs `f` under the world lock, then persists (if anything changed), queues the
    /// outgoing messages in order and wakes the timer task.
    pub(crate) fn mutate<R>(&self, f: impl FnOnce(&mut Tx<'_>) -> R) -> R {
        self.mutate_inner(true, f)
    }

    pub(crate) fn mutate_inner<R>(&self, notify: bool, f: impl FnOnce(&mut Tx<'_>) -> R) -> R {
        let mut guard = self.lock();
        let mut tx = Tx {
            core: self,
            w: &mut guard,
            out: Vec::new(),
            dirty: notify,
            touched: BTreeSet::new(),
        };
        let r = f(&mut tx);
        let (out, dirty) = (std::mem::take(&mut tx.out), tx.dirty);
        let touched = std::mem::take(&mut tx.touched);
        if dirty || !touched.is_empty() {
            if let Err(e) = self.store.save(&guard.state, &touched) {
                tracing::error!("saving state: {e}");
            }
        }
        for o in out {
            let _ = self.outbox.send(o);
        }
        drop(guard);
        if notify {
            self.timers.notify_one();
        }
        r
    }

    pub(crate) fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.lock().state)
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let w = self.lock();
        w.leases
            .values()
            .chain(w.offers.values())
            .chain(w.heartbeats.values())
            .min()
            .copied()
    }

    pub(crate) fn new_id(&self) -> String {
        self.lock().ids.next()
    }

    // ---- pools -------------------------------------------------------------------

    /// The pool a client certificate belongs to; `Err` says why it is refused.
    pub(crate) fn pool_for_fingerprint(
        &self,
        fingerprint: &str,
    ) -> std::result::Result<String, String> {
        let w = self.lock();
        for pool in w.state.pools.values() {
            if pool.fingerprint == fingerprint {
                return Ok(pool.ulid.clone());
            }
            if pool.retired_fingerprints.iter().any(|f| f == fingerprint) {
                return Err(format!(
                    "certificate of pool {} was replaced by a pool reset",
                    pool.ulid
                ));
            }
        }
        Err("certificate does not belong to any pool".into())
    }

    pub(crate) fn add_pool(&self, key: PoolKeySource<'_>) -> Result<(String, Option<String>)> {
        let id = self.new_id();
        let (cert_pem, key_pem) = self.issue(&id, key, 0)?;
        let fingerprint = crate::pki::fingerprint(&crate::pki::first_cert_der(&cert_pem)?);
        self.mutate(|tx| {
            tx.w.state.pools.insert(
                id.clone(),
                Pool {
                    ulid: id.clone(),
                    cert_pem,
                    fingerprint: fingerprint.clone(),
                    retired_fingerprints: Vec::new(),
                    resets: 0,
                },
            );
            tx.event(
                NewEvent::new(kinds::POOL_CREATED)
                    .pool(&id)
                    .data(json!({ "fingerprint": fingerprint })),
            );
        });
        Ok((id, key_pem))
    }

    /// Issues a new certificate for `pool`; the old one is refused from now on.
    /// Returns the new key when generated, and the old fingerprint.
    pub(crate) fn reset_pool(
        &self,
        pool: &str,
        key: PoolKeySource<'_>,
    ) -> Result<(Option<String>, String)> {
        let resets = self
            .read(|s| s.pools.get(pool).map(|p| p.resets))
            .ok_or_else(|| BackendError::NotFound(format!("pool {pool}")))?;
        let (cert_pem, key_pem) = self.issue(pool, key, resets + 1)?;
        let fingerprint = crate::pki::fingerprint(&crate::pki::first_cert_der(&cert_pem)?);
        let old = self.mutate(|tx| {
            let p = tx.w.state.pools.get_mut(pool)?;
            let old = std::mem::replace(&mut p.fingerprint, fingerprint.clone());
            p.retired_fingerprints.push(old.clone());
            p.cert_pem = cert_pem;
            p.resets += 1;
            tx.event(
                NewEvent::new(kinds::POOL_RESET)
                    .pool(pool)
                    .data(json!({ "fingerprint": fingerprint, "retired": old })),
            );
            Some(old)
        });
        let old = old.ok_or_else(|| BackendError::NotFound(format!("pool {pool}")))?;
        Ok((key_pem, old))
    }

    fn issue(
        &self,
        cn: &str,
        key: PoolKeySource<'_>,
        nonce: u64,
    ) -> Result<(String, Option<String>)> {
        match key {
            PoolKeySource::Csr(csr) => Ok((self.pki.sign_csr(csr, cn, nonce)?, None)),
            PoolKeySource::Generate { bits } => {
                let ck = self.pki.generate_client(cn, bits, nonce)?;
                Ok((ck.cert_pem, Some(ck.key_pem)))
            }
        }
    }

    // ---- HTTPS API ---------------------------------------------------------------

    fn check_worker(s: &State, pool: &str, worker: &str) -> std::result::Result<(), ApiError> {
        match s.workers.get(worker) {
            Some(w) if w.pool == pool => Ok(()),
            _ => Err(ApiError::forbidden(format!(
                "worker {worker} is not registered in pool {pool}"
            ))),
        }
    }

    fn check_run(s: &State, pool: &str, run: &str) -> std::result::Result<(), ApiError> {
        match s.runs.get(run) {
            Some(r) if r.pool == pool => Ok(()),
            _ => Err(ApiError::not_found(format!(
                "run {run} not found in pool {pool}"
            ))),
        }
    }

    pub(crate) fn register(
        &self,
        pool: &str,
        req: RegisterRequest,
    ) -> std::result::Result<RegisterResponse, ApiError> {
        if req.protocol_version != PROTOCOL_VERSION {
            return Err(ApiError::bad_request(format!(
                "protocol_version {} is not supported (this backend speaks {PROTOCOL_VERSION})",
                req.protocol_version
            )));
        }
        if req.capacity == 0 || req.capacity > 1024 {
            return Err(ApiError::bad_request(format!(
                "capacity {} is out of range (1..=1024)",
                req.capacity
            )));
        }
        let interval_ms = self.timing.heartbeat_interval.as_millis() as u64;
        Ok(self.mutate(|tx| {
            let reuse = req.previous_worker_ulid.as_ref().filter(|id| {
                tx.w.state
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
            let drained = tx.w.state.workers.get(&id).is_some_and(|w| w.drained);
            tx.w.state.workers.insert(
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
                    reported_state: None,
                    last_heartbeat_seq: None,
                    gone_crashed: None,
                },
            );
            let held_runs: Vec<String> =
                tx.w.state
                    .runs
                    .iter()
                    .filter(|(_, r)| {
                        r.worker.as_deref() == Some(id.as_str())
                            && !r.state.is_terminal()
                            && r.state != RunState::Scheduled
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
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

    pub(crate) fn claim(
        &self,
        pool: &str,
        run_id: &str,
        worker: &str,
    ) -> std::result::Result<ClaimResponse, ApiError> {
        let ttl = self.timing.lease_ttl;
        self.mutate(|tx| {
            Core::check_worker(&tx.w.state, pool, worker)?;
            Core::check_run(&tx.w.state, pool, run_id)?;
            let refuse = |tx: &mut Tx<'_>, reason: String, state: RunState| {
                tx.event(
                    NewEvent::new(kinds::CLAIM_REFUSED)
                        .pool(pool)
                        .worker(worker)
                        .run(run_id)
                        .data(json!({ "reason": reason, "state": state })),
                );
                Err(ApiError::conflict(reason, state))
            };
            let run = &tx.w.state.runs[run_id];
            let (state, holder) = (run.state, run.worker.clone());
            if state == RunState::Scheduled {
                let w = &tx.w.state.workers[worker];
                if w.drained {
                    return refuse(tx, format!("worker {worker} is drained"), state);
                }
                if tx.held(worker) >= w.capacity as usize {
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
            tx.w.leases.insert(run_id.to_string(), Instant::now() + ttl);
            let run = tx.run_mut(run_id).expect("checked");
            run.worker = Some(worker.to_string());
            run.offered_to = None;
            let spec = run.spec.clone();
            tx.w.offers.remove(run_id);
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
            })
        })
    }

    pub(crate) fn renew(
        &self,
        pool: &str,
        run_id: &str,
        worker: &str,
    ) -> std::result::Result<Lease, ApiError> {
        let ttl = self.timing.lease_ttl;
        self.mutate(|tx| {
            Core::check_worker(&tx.w.state, pool, worker)?;
            Core::check_run(&tx.w.state, pool, run_id)?;
            let run = &tx.w.state.runs[run_id];
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
                return Err(ApiError::conflict(why, state));
            }
            tx.w.leases.insert(run_id.to_string(), Instant::now() + ttl);
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
    ) -> std::result::Result<TransitionResponse, ApiError> {
        self.mutate(|tx| {
            let worker = req.worker_ulid.as_str();
            Core::check_worker(&tx.w.state, pool, worker)?;
            Core::check_run(&tx.w.state, pool, run_id)?;
            let run = &tx.w.state.runs[run_id];
            let current = run.state;
            let refuse = |tx: &mut Tx<'_>, why: String| {
                tx.event(
                    NewEvent::new(kinds::TRANSITION_REFUSED)
                        .pool(pool)
                        .worker(worker)
                        .run(run_id)
                        .data(json!({ "reason": why, "from": current, "to": req.state })),
                );
                Err(ApiError::conflict(why, current))
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
    ) -> std::result::Result<LogAck, ApiError> {
        self.mutate(|tx| {
            let worker = batch.worker_ulid.clone();
            Core::check_worker(&tx.w.state, pool, &worker)?;
            Core::check_run(&tx.w.state, pool, run_id)?;
            let run = tx.run_mut(run_id).expect("checked");
            if run.worker.as_deref() != Some(worker.as_str()) {
                let state = run.state;
                return Err(ApiError::conflict(
                    format!("run {run_id} is not claimed by worker {worker}"),
                    state,
                ));
            }
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

    pub(crate) fn latest_binary(&self, arch: Arch) -> Option<BinaryRecord> {
        self.read(|s| s.binaries.iter().rev().find(|b| b.arch == arch).cloned())
    }

    pub(crate) fn find_binary(&self, version: &str, arch: Arch) -> Option<BinaryRecord> {
        self.read(|s| {
            s.binaries
                .iter()
                .rev()
                .find(|b| b.arch == arch && b.version == version)
                .cloned()
        })
    }

    // ---- admin -------------------------------------------------------------------

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
            };
            tx.touched.insert(id.clone());
            tx.w.active.insert(id.clone());
            tx.w.state
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
                    })),
            );
            tx.dispatch();
            if tx.w.state.runs[&id].offered_to.is_none() {
                tx.event(NewEvent::new(kinds::RUN_QUEUED).pool(&req.pool).run(&id));
            }
            id
        }))
    }

    /// Cancels a run: an unclaimed one goes straight to `canceled`; a held one gets
    /// `run.cancel` sent to its worker, which reports the outcome. Returns the state now.
    pub(crate) fn cancel_run(&self, run_id: &str, reason: Option<String>) -> Result<RunState> {
        self.mutate(|tx| {
            let (pool, state) =
                tx.w.state
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

    pub(crate) fn worker_command(&self, worker: &str, command: WorkerCommand) -> Result<()> {
        self.mutate(|tx| {
            let w =
                tx.w.state
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

    pub(crate) fn publish_binary(
        &self,
        arch: Arch,
        version: Option<String>,
        content: BinaryContent,
    ) -> Result<WorkerBinary> {
        let version = match version {
            Some(v) if !v.is_empty() && !v.contains('/') && v.len() <= 128 => v,
            Some(v) => return Err(BackendError::Invalid(format!("version {v:?}"))),
            None => format!(
                "0.1.{}",
                self.read(|s| s.binaries.iter().filter(|b| b.arch == arch).count()) + 1
            ),
        };
        let bytes = content.render(arch, &version);
        let sha256 = sha256_hex(&bytes);
        self.store.write_binary(&sha256, &bytes)?;
        let binary = WorkerBinary {
            version: version.clone(),
            arch,
            size: bytes.len() as u64,
            sha256: sha256.clone(),
        };
        self.mutate(|tx| {
            tx.w.state.binaries.push(BinaryRecord {
                version,
                arch,
                size: binary.size,
                sha256,
                kind: content.kind().to_string(),
            });
            tx.event(
                NewEvent::new(kinds::BINARY_PUBLISHED)
                    .data(json!({ "binary": binary, "kind": content.kind() })),
            );
            let online: Vec<(String, String)> =
                tx.w.state
                    .workers
                    .values()
                    .filter(|w| w.online)
                    .map(|w| (w.pool.clone(), w.ulid.clone()))
                    .collect();
            for (pool, worker) in online {
                let message_id = tx.message_id();
                tx.send(
                    &pool,
                    &worker,
                    ServerMessage::BinaryPublished {
                        message_id,
                        binary: binary.clone(),
                    },
                );
            }
        });
        Ok(binary)
    }

    // ---- MQTT inbound ------------------------------------------------------------

    /// A message a worker published (or its Last Will). Bad input is recorded, never fatal.
    pub(crate) fn on_worker_publish(&self, topic: &str, payload: &[u8]) {
        let Some((Direction::FromWorker, pool, worker)) = topics::parse(&self.namespace, topic)
        else {
            self.record(
                NewEvent::new(kinds::MESSAGE_IGNORED)
                    .data(json!({ "topic": topic, "reason": "not a worker topic" })),
            );
            return;
        };
        let msg = match WorkerMessage::parse(payload) {
            Err(e) => {
                self.record(
                    NewEvent::new(kinds::MESSAGE_INVALID)
                        .pool(&pool)
                        .worker(&worker)
                        .data(json!({ "topic": topic, "error": e.to_string() })),
                );
                return;
            }
            Ok(Incoming::UnknownType(t)) => {
                self.record(
                    NewEvent::new(kinds::MESSAGE_UNKNOWN_TYPE)
                        .pool(&pool)
                        .worker(&worker)
                        .data(json!({ "topic": topic, "type": t })),
                );
                return;
            }
            Ok(Incoming::Message(m)) => m,
        };
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
            let Some(w) =
                tx.w.state
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
                    let was_online = w.online;
                    let old_state = w.reported_state;
                    w.online = true;
                    w.gone_crashed = None;
                    w.reported_state = Some(hb.state);
                    tx.w.heartbeats
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
                    tx.dispatch();
                }
                WorkerMessage::Gone { crashed, .. } => {
                    w.online = false;
                    w.gone_crashed = Some(crashed);
                    tx.w.heartbeats.remove(&worker);
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

    // ---- views -------------------------------------------------------------------

    pub(crate) fn run_view(&self, run: &str) -> Option<RunView> {
        self.read(|s| s.runs.get(run).map(RunView::from))
    }

    pub(crate) fn worker_view(&self, worker: &str) -> Option<WorkerView> {
        self.read(|s| s.workers.get(worker).map(WorkerView::from))
    }
}

/// Applies deadlines (leases, offers, heartbeats) as they pass, on tokio's clock, so
/// paused-time tests drive them.
pub(crate) async fn run_timers(
    core: std::sync::Arc<Core>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let next = core.next_deadline();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = core.timers.notified() => {}
            _ = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        core.mutate_inner(false, |tx| tx.expire(Instant::now()));
    }
}

/// Where a pool's key comes from.
#[derive(Debug, Clone, Copy)]
pub enum PoolKeySource<'a> {
    /// A PEM CSR made by the operator (e.g. with `openssl req`).
    Csr(&'a str),
    /// Generate an RSA key of this many bits (2048, 3072, 4096).
    Generate { bits: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerCommand {
    Drain,
    Undrain,
    Cycle,
}

/// A run as the backend sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunView {
    pub run_ulid: String,
    pub pool: String,
    pub state: RunState,
    pub worker: Option<String>,
    pub offered_to: Option<String>,
    pub exit_code: Option<i64>,
    pub reason: Option<Reason>,
    pub worker_version: Option<String>,
    pub history: Vec<RunState>,
    pub log_lines: Vec<protocol::api::LogLine>,
    pub cancel_requested: bool,
    pub spec: RunSpec,
}

impl From<&Run> for RunView {
    fn from(r: &Run) -> RunView {
        RunView {
            run_ulid: r.spec.run_ulid.clone(),
            pool: r.pool.clone(),
            state: r.state,
            worker: r.worker.clone(),
            offered_to: r.offered_to.clone(),
            exit_code: r.exit_code,
            reason: r.reason.clone(),
            worker_version: r.worker_version.clone(),
            history: r.history.clone(),
            log_lines: r.logs.clone(),
            cancel_requested: r.cancel_requested,
            spec: r.spec.clone(),
        }
    }
}

/// A worker as the backend sees it. `status` is OFFLINE, IDLE, BUSY or DRAINED.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkerView {
    pub worker_ulid: String,
    pub pool: String,
    pub arch: Arch,
    pub capacity: u32,
    pub launcher_version: String,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub online: bool,
    pub drained: bool,
    pub status: String,
    pub reported_state: Option<WorkerState>,
    pub gone_crashed: Option<bool>,
}

impl From<&Worker> for WorkerView {
    fn from(w: &Worker) -> WorkerView {
        WorkerView {
            worker_ulid: w.ulid.clone(),
            pool: w.pool.clone(),
            arch: w.arch,
            capacity: w.capacity,
            launcher_version: w.launcher_version.clone(),
            metadata: w.metadata.clone(),
            online: w.online,
            drained: w.drained,
            status: worker_view_state(w).to_string(),
            reported_state: w.reported_state,
            gone_crashed: w.gone_crashed,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use protocol::messages::Heartbeat;

    use super::*;
    use crate::clock::BASE_MS;

    struct World {
        core: Arc<Core>,
        out: mpsc::UnboundedReceiver<Outbound>,
        _dir: tempfile::TempDir,
        _stop: tokio_util::sync::DropGuard,
    }

    fn world(lease_s: u64) -> World {
        let dir = tempfile::tempdir().unwrap();
        let (tx, out) = mpsc::unbounded_channel();
        let parts = Parts {
            timing: Timing {
                lease_ttl: Duration::from_secs(lease_s),
                heartbeat_interval: Duration::from_secs(5),
                offer_ttl: Duration::from_secs(lease_s),
            },
            clock: Clock::new(BASE_MS),
            events: EventLog::open(dir.path()).unwrap(),
            store: Store::open(dir.path()).unwrap(),
            pki: Pki::load_or_create(dir.path()).unwrap(),
            seed: 42,
        };
        let core = Arc::new(Core::new(parts, State::default(), tx));
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(run_timers(core.clone(), stop.clone()));
        World {
            core,
            out,
            _dir: dir,
            _stop: stop.drop_guard(),
        }
    }

    fn pool(core: &Core) -> String {
        // No certificate needed for core tests: insert the pool directly.
        core.mutate(|tx| {
            let id = tx.new_id();
            tx.w.state.pools.insert(
                id.clone(),
                Pool {
                    ulid: id.clone(),
                    cert_pem: String::new(),
                    fingerprint: id.clone(),
                    retired_fingerprints: vec![],
                    resets: 0,
                },
            );
            id
        })
    }

    fn register(core: &Core, pool: &str, capacity: u32) -> String {
        let req = RegisterRequest {
            protocol_version: 1,
            arch: Arch::Amd64,
            launcher_version: "t".into(),
            capacity,
            metadata: Default::default(),
            previous_worker_ulid: None,
        };
        core.register(pool, req).unwrap().worker_ulid
    }

    fn heartbeat(core: &Core, pool: &str, worker: &str, seq: u64) {
        let hb = WorkerMessage::Heartbeat(Heartbeat {
            worker_ulid: worker.into(),
            seq,
            state: WorkerState::Idle,
            runs: vec![],
            capacity: 1,
        });
        core.on_worker_publish(&topics::writeonly("spacelift", pool, worker), &hb.to_json());
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_fails_the_run_after_exactly_the_ttl() {
        let mut w = world(30);
        let core = w.core.clone();
        let p = pool(&core);
        let worker = register(&core, &p, 1);
        heartbeat(&core, &p, &worker, 1);
        let run = core.schedule_run(ScheduleRun::new(&p)).unwrap();
        let sent = w.out.recv().await.unwrap();
        assert!(matches!(sent.msg, ServerMessage::RunScheduled { .. }));
        core.claim(&p, &run, &worker).unwrap();
        let granted = core
            .events
            .wait_for_since(0, |e| e.kind == kinds::CLAIM_GRANTED)
            .await;
        // Renewals push the deadline out; keep the worker's heartbeats going meanwhile.
        for i in 0..3u32 {
            tokio::time::sleep(Duration::from_secs(4)).await;
            heartbeat(&core, &p, &worker, 2 + u64::from(i));
            core.renew(&p, &run, &worker).unwrap();
        }
        let expired = core
            .events
            .wait_for_since(0, |e| e.kind == kinds::LEASE_EXPIRED)
            .await;
        assert_eq!(expired.at_ms - granted.at_ms, 12_000 + 30_000);
        let v = core.run_view(&run).unwrap();
        assert_eq!(v.state, RunState::Failed);
        assert_eq!(v.reason.unwrap().code, reason_codes::WORKER_LOST);
        // Never offered again, even with the worker online and free.
        heartbeat(&core, &p, &worker, 10);
        tokio::time::sleep(Duration::from_secs(120)).await;
        let offers = core
            .events
            .since(0)
            .iter()
            .filter(|e| e.kind == kinds::RUN_OFFERED)
            .count();
        assert_eq!(offers, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_worker_goes_offline_and_its_offer_moves_on() {
        let mut w = world(60);
        let core = w.core.clone();
        let p = pool(&core);
        let a = register(&core, &p, 1);
        heartbeat(&core, &p, &a, 1);
        let run = core.schedule_run(ScheduleRun::new(&p)).unwrap();
        assert_eq!(w.out.recv().await.unwrap().worker, a);
        let b = register(&core, &p, 1);
        let keepalive = {
            let (core, p, b) = (core.clone(), p.clone(), b.clone());
            tokio::spawn(async move {
                for seq in 1.. {
                    heartbeat(&core, &p, &b, seq);
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            })
        };
        // `a` stays silent: offline after 3 heartbeat intervals; the offer goes to `b`.
        let offline = core
            .events
            .wait_for_since(0, |e| e.kind == kinds::WORKER_OFFLINE)
            .await;
        assert_eq!(offline.worker.as_deref(), Some(a.as_str()));
        let next = w.out.recv().await.unwrap();
        assert_eq!(
            (next.worker.as_str(), &next.msg),
            (
                b.as_str(),
                &ServerMessage::RunScheduled {
                    message_id: match &next.msg {
                        ServerMessage::RunScheduled { message_id, .. } => message_id.clone(),
                        _ => unreachable!(),
                    },
                    run_ulid: run.clone(),
                }
            )
        );
        assert!(!core.worker_view(&a).unwrap().online);
        keepalive.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_unclaimed_offer_is_made_again_after_the_offer_ttl() {
        let mut w = world(10);
        let core = w.core.clone();
        let p = pool(&core);
        let a = register(&core, &p, 1);
        heartbeat(&core, &p, &a, 1);
        let run = core.schedule_run(ScheduleRun::new(&p)).unwrap();
        w.out.recv().await.unwrap();
        // Keep `a` alive but never claim.
        let keepalive = {
            let core = core.clone();
            let (p, a) = (p.clone(), a.clone());
            tokio::spawn(async move {
                for seq in 2.. {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    heartbeat(&core, &p, &a, seq);
                }
            })
        };
        let again = w.out.recv().await.unwrap();
        assert!(
            matches!(&again.msg, ServerMessage::RunScheduled { run_ulid, .. } if *run_ulid == run)
        );
        assert!(core
            .events
            .since(0)
            .iter()
            .any(|e| e.kind == kinds::RUN_OFFER_EXPIRED));
        keepalive.abort();
    }
}
