//! Scheduling and deadlines: offering queued runs to free workers, run state changes, and
//! the deadlines (leases, offers, heartbeats) that fail runs, re-offer them and take
//! silent workers offline, applied on tokio's clock.

use std::collections::HashMap;

use protocol::api::{reason_codes, Reason};
use protocol::messages::{ServerMessage, WorkerState};
use protocol::RunState;
use serde_json::json;
use tokio::time::Instant;

use super::{Core, Tx};
use crate::events::{kinds, NewEvent};

impl Tx<'_> {
    /// How many runs `worker` holds (claimed, not terminal).
    pub(super) fn held(&mut self, worker: &str) -> usize {
        self.sync_index();
        self.st.index.held(worker).count()
    }

    /// The runs `worker` holds, in ULID order.
    pub(super) fn held_runs(&mut self, worker: &str) -> Vec<String> {
        self.sync_index();
        self.st.index.held(worker).cloned().collect()
    }

    /// Offers every queued run to a free worker of its pool: online, not drained, with
    /// capacity; idle workers first, newest first (as Spacelift schedules).
    pub(crate) fn dispatch(&mut self) {
        self.sync_index();
        if !self.st.index.has_queued() {
            return;
        }
        // Free slots of the workers that can take runs: when none is left, the rest of the
        // queue waits (without this, a long queue costs queue x workers per dispatch).
        let takes_runs = |w: &crate::store::Worker| {
            w.online && !w.drained && w.reported_state != Some(WorkerState::Drained)
        };
        let index = &self.st.index;
        let mut free: usize = self
            .st
            .state
            .workers
            .values()
            .filter(|w| takes_runs(w))
            .map(|w| (w.capacity as usize).saturating_sub(index.load(&w.ulid)))
            .sum();
        if free == 0 {
            return;
        }
        // Each worker's load (held + offered), from the index, counted up as offers go out.
        let mut load: HashMap<String, usize> = HashMap::new();
        for w in self.st.state.workers.values().filter(|w| takes_runs(w)) {
            load.insert(w.ulid.clone(), index.load(&w.ulid));
        }
        // The queue as it stood on entry (offers below change runs, not the index), walked
        // in order with a cursor.
        let mut cursor: Option<String> = None;
        while free > 0 {
            let Some(run_id) = self.st.index.next_queued(cursor.as_deref()).cloned() else {
                break;
            };
            cursor = Some(run_id.clone());
            let pool = self.st.state.runs[&run_id].pool.clone();
            let mut best: Option<(bool, String)> = None;
            for w in self.st.state.workers.values() {
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
            free -= 1;
            self.offer(&run_id, &pool, &worker);
        }
    }

    fn offer(&mut self, run_id: &str, pool: &str, worker: &str) {
        if let Some(run) = self.run_mut(run_id) {
            run.offered_to = Some(worker.to_string());
        }
        self.st.offers.insert(
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
    pub(super) fn withdraw_offers(&mut self, worker: &str) {
        self.sync_index();
        let offered: Vec<String> = self.st.index.offered(worker).cloned().collect();
        for id in offered {
            let Some(run) = self.st.state.runs.get_mut(&id) else {
                continue;
            };
            if run.state == RunState::Scheduled && run.offered_to.as_deref() == Some(worker) {
                run.offered_to = None;
                self.st.offers.remove(&id);
                self.touched.insert(id);
            }
        }
    }

    pub(super) fn set_state(&mut self, run_id: &str, to: RunState, by: &str) {
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
            self.st.leases.remove(run_id);
            self.st.offers.remove(run_id);
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
        for run_id in due(&self.st.leases) {
            self.st.leases.remove(&run_id);
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
        for run_id in due(&self.st.offers) {
            self.st.offers.remove(&run_id);
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
        for worker_id in due(&self.st.heartbeats) {
            self.st.heartbeats.remove(&worker_id);
            let Some(w) = self.st.state.workers.get_mut(&worker_id) else {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use protocol::api::RegisterRequest;
    use protocol::messages::{Heartbeat, InterruptionNotice, WorkerMessage};
    use protocol::{topics, Arch};
    use tokio::sync::mpsc;

    use super::*;
    use crate::clock::{Clock, BASE_MS};
    use crate::events::EventLog;
    use crate::pki::Pki;
    use crate::rules::{Outbound, Parts, Timing};
    use crate::store::{Pool, State, Store};
    use crate::ScheduleRun;

    struct Fixture {
        core: Arc<Core>,
        out: mpsc::UnboundedReceiver<Outbound>,
        _dir: tempfile::TempDir,
        _stop: tokio_util::sync::DropGuard,
    }

    fn fixture(lease_s: u64) -> Fixture {
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
        Fixture {
            core,
            out,
            _dir: dir,
            _stop: stop.drop_guard(),
        }
    }

    fn pool(core: &Core) -> String {
        // No certificate needed for rules tests: insert the pool directly.
        core.mutate(|tx| {
            let id = tx.new_id();
            tx.st.state.pools.insert(
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
        heartbeat_with(core, pool, worker, seq, None);
    }

    fn heartbeat_with(
        core: &Core,
        pool: &str,
        worker: &str,
        seq: u64,
        interruption: Option<InterruptionNotice>,
    ) {
        let state = if interruption.is_some() {
            WorkerState::Drained
        } else {
            WorkerState::Idle
        };
        let hb = WorkerMessage::Heartbeat(Heartbeat {
            worker_ulid: worker.into(),
            seq,
            state,
            runs: vec![],
            capacity: 1,
            interruption,
        });
        let topic = topics::writeonly("spacelift", pool, worker);
        core.on_worker_message(pool.to_string(), worker.to_string(), &topic, hb);
    }

    #[tokio::test(start_paused = true)]
    async fn an_interruption_notice_is_recorded_once_and_shown_in_the_worker_view() {
        let mut w = fixture(30);
        let core = w.core.clone();
        let p = pool(&core);
        let worker = register(&core, &p, 1);
        heartbeat(&core, &p, &worker, 1);
        assert_eq!(core.worker_view(&worker).unwrap().interruption, None);
        let notice = InterruptionNotice {
            cloud: "aws".into(),
            action: "terminate".into(),
            deadline: "2026-11-29T10:02:00Z".into(),
        };
        // Every heartbeat after the notice carries it; one event, not one per heartbeat.
        for seq in 2..5 {
            heartbeat_with(&core, &p, &worker, seq, Some(notice.clone()));
        }
        let v = core.worker_view(&worker).unwrap();
        assert_eq!(v.interruption.as_ref(), Some(&notice));
        assert_eq!(v.status, "DRAINED");
        let events: Vec<_> = core
            .events
            .since(0)
            .into_iter()
            .filter(|e| e.kind == kinds::WORKER_INTERRUPTION)
            .collect();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data["notice"]["deadline"], "2026-11-29T10:02:00Z");
        // A drained, interrupted worker is offered nothing.
        core.schedule_run(ScheduleRun::new(&p)).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(w.out.try_recv().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_fails_the_run_after_exactly_the_ttl() {
        let mut w = fixture(30);
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
        let mut w = fixture(60);
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
        let mut w = fixture(10);
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
