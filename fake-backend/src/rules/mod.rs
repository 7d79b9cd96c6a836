//! The backend's state and rules, free of any transport: pools, workers, runs and the
//! run state machine, leases and heartbeat timeouts. The HTTPS API, the MQTT inbound
//! path, the admin API and the in-process handle all call into [`Core`]; refusals are a
//! [`RuleError`] that each transport maps to its own answer. Every change is made under
//! one lock, recorded as events, persisted, and its outgoing MQTT messages queued in
//! order for the outbox.

mod binaries;
mod pools;
mod run_index;
mod runs;
mod samples;
mod scheduling;
mod views;
mod workers;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use protocol::messages::ServerMessage;
use protocol::topics;
use protocol::RunState;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::clock::{Clock, IdGen};
use crate::events::{EventLog, NewEvent};
use crate::faults::Faults;
use crate::pki::Pki;
use crate::store::{Run, State, Store};

pub use pools::PoolKeySource;
pub(crate) use scheduling::run_timers;
pub use views::{RunView, WorkerView};
pub use workers::WorkerCommand;

/// A message for one worker's readonly topic, queued for the outbox.
#[derive(Debug, Clone)]
pub(crate) struct Outbound {
    pub pool: String,
    pub worker: String,
    pub msg: ServerMessage,
}

/// Why a rule refused a request. Transport-free: the HTTPS API maps each kind to a status
/// code and protocol error body; the message is the operator-facing text either way.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum RuleError {
    /// The request itself is unacceptable (e.g. an unsupported protocol version).
    #[error("{0}")]
    Invalid(String),
    /// The caller is not a worker of the pool it speaks for.
    #[error("{0}")]
    NotRegistered(String),
    #[error("{0}")]
    NotFound(String),
    /// The run's state (or holder) does not allow it; `current` is the run's state now.
    #[error("{message}")]
    Conflict { message: String, current: RunState },
}

impl RuleError {
    fn conflict(message: impl Into<String>, current: RunState) -> RuleError {
        RuleError::Conflict {
            message: message.into(),
            current,
        }
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

/// The backend's state under its one lock: the persisted [`State`] plus what lives only
/// in memory (the ID generator, deadlines, the set of active runs).
pub(crate) struct BackendState {
    pub state: State,
    ids: IdGen,
    leases: HashMap<String, Instant>,
    offers: HashMap<String, Instant>,
    heartbeats: HashMap<String, Instant>,
    /// The runs not yet terminal, indexed for scheduling (so its cost does not grow with
    /// the number of runs ever made, nor with the queue). Derived from `state`, never
    /// persisted; brought up to date with the runs a transaction touched.
    index: run_index::RunIndex,
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
    locked: Mutex<BackendState>,
    outbox: mpsc::UnboundedSender<Outbound>,
}

/// One change in progress (the state lock is held).
pub(crate) struct Tx<'a> {
    core: &'a Core,
    st: &'a mut BackendState,
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
        self.st.ids.next()
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
        self.st.state.endpoints = Some(e);
        self.dirty = true;
    }

    /// Brings the run index up to date with the runs changed so far.
    fn sync_index(&mut self) {
        for id in &self.touched {
            self.st.index.update(id, self.st.state.runs.get(id));
        }
    }

    /// A run to change; marks it for saving (and for re-indexing).
    fn run_mut(&mut self, run_id: &str) -> Option<&mut Run> {
        let run = self.st.state.runs.get_mut(run_id)?;
        self.touched.insert(run_id.to_string());
        Some(run)
    }

    fn message_id(&mut self) -> String {
        self.new_id()
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
        let ids = IdGen::new(
            seed ^ state.generation.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            crate::clock::BASE_MS + state.generation * 86_400_000,
        );
        let mut leases = HashMap::new();
        let mut index = run_index::RunIndex::default();
        let now = Instant::now();
        for w in state.workers.values_mut() {
            w.online = false;
        }
        for (id, run) in state.runs.iter_mut() {
            // Offers died with the old process; held runs get a fresh lease so a
            // reconnecting worker can renew it.
            run.offered_to = None;
            index.update(id, Some(run));
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
            locked: Mutex::new(BackendState {
                state,
                ids,
                leases,
                offers: HashMap::new(),
                heartbeats: HashMap::new(),
                index,
            }),
            outbox,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BackendState> {
        self.locked.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn record(&self, ev: NewEvent) {
        self.events.record(self.clock.now_ms(), ev);
    }

    /// Runs `f` under the state lock, then persists (if anything changed), queues the
    /// outgoing messages in order and wakes the timer task.
    pub(crate) fn mutate<R>(&self, f: impl FnOnce(&mut Tx<'_>) -> R) -> R {
        self.mutate_inner(true, f)
    }

    pub(crate) fn mutate_inner<R>(&self, notify: bool, f: impl FnOnce(&mut Tx<'_>) -> R) -> R {
        let mut guard = self.lock();
        let mut tx = Tx {
            core: self,
            st: &mut guard,
            out: Vec::new(),
            dirty: notify,
            touched: BTreeSet::new(),
        };
        let r = f(&mut tx);
        tx.sync_index();
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
        let st = self.lock();
        st.leases
            .values()
            .chain(st.offers.values())
            .chain(st.heartbeats.values())
            .min()
            .copied()
    }

    pub(crate) fn new_id(&self) -> String {
        self.lock().ids.next()
    }
}
