//! A real-time budget per schedule for `scenario explore`: on paused time no virtual time
//! passes while a task keeps running, so one livelocked schedule (a retry loop that never
//! waits) would hang the exploration, and CI with it, instead of failing it with its seed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::explore::Runner;

/// Watches every runner it guards; calls `on_overrun` once a single schedule has run
/// longer than the budget.
pub struct Watchdog {
    budget: Duration,
    slots: Mutex<Vec<Option<(u64, Instant)>>>,
}

impl Watchdog {
    /// Starts the watching thread. `on_overrun(seed, budget)` runs on it, for the first
    /// schedule over the budget; it is expected to end the process (the schedule's thread
    /// cannot be stopped), and the watch ends after it.
    pub fn start(
        budget: Duration,
        on_overrun: impl FnOnce(u64, Duration) + Send + 'static,
    ) -> Arc<Watchdog> {
        let dog = Arc::new(Watchdog {
            budget,
            slots: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&dog);
        let tick = (budget / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
        std::thread::spawn(move || loop {
            std::thread::sleep(tick);
            let Some(dog) = weak.upgrade() else { return };
            if let Some(seed) = dog.overrun() {
                on_overrun(seed, dog.budget);
                return;
            }
        });
        dog
    }

    /// The seed of a schedule running longer than the budget.
    fn overrun(&self) -> Option<u64> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .flatten()
            .find(|(_, since)| since.elapsed() > self.budget)
            .map(|(seed, _)| *seed)
    }

    fn set(&self, slot: usize, running: Option<(u64, Instant)>) {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())[slot] = running;
    }

    /// `runner`, with each call timed by this watchdog.
    pub fn guard(self: &Arc<Self>, mut runner: Box<Runner<'static>>) -> Box<Runner<'static>> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.push(None);
            slots.len() - 1
        };
        let dog = Arc::clone(self);
        Box::new(move |scenario, seed| {
            dog.set(slot, Some((seed, Instant::now())));
            let verdict = runner(scenario, seed);
            dog.set(slot, None);
            verdict
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::random::Schedule;
    use crate::report::{Report, Trace};

    fn pass(seed: u64) -> Report {
        Report {
            seed,
            mode: crate::model::Mode::Sim,
            passed: true,
            failures: Vec::new(),
            trace: Trace::default(),
            full: Vec::new(),
        }
    }

    #[test]
    fn a_schedule_over_its_real_time_budget_is_named_by_its_seed() {
        let (overrun_tx, overrun_rx) = mpsc::channel();
        let dog = Watchdog::start(Duration::from_millis(20), move |seed, _| {
            let _ = overrun_tx.send(seed);
        });
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let guarded = Arc::clone(&dog);
        let watched = std::thread::spawn(move || {
            let mut runner = guarded.guard(Box::new(move |_, seed| {
                if seed == 7 {
                    // Stands for a livelock: returns only once the watchdog has spoken.
                    let _ = release_rx.recv();
                }
                Ok(pass(seed))
            }));
            let scenario = Schedule::generate(1, 2).scenario();
            assert!(
                runner(&scenario, 1).is_ok(),
                "a quick schedule passes unseen"
            );
            runner(&scenario, 7).map(|r| r.seed)
        });
        assert_eq!(overrun_rx.recv_timeout(Duration::from_secs(60)), Ok(7));
        release_tx.send(()).unwrap();
        assert_eq!(watched.join().unwrap().unwrap(), 7);
        assert!(
            overrun_rx.try_recv().is_err(),
            "the quick schedule never overran"
        );
    }
}
