//! The bounded memory of run ULIDs the supervisor dedupes `run.scheduled` by.

use std::collections::{HashSet, VecDeque};

/// Bounded memory of run ULIDs: the oldest are forgotten first.
pub(super) struct SeenRuns {
    order: VecDeque<String>,
    set: HashSet<String>,
    limit: usize,
}

impl SeenRuns {
    pub(super) fn new(limit: usize) -> SeenRuns {
        SeenRuns {
            order: VecDeque::new(),
            set: HashSet::new(),
            limit,
        }
    }

    pub(super) fn contains(&self, run: &str) -> bool {
        self.set.contains(run)
    }

    pub(super) fn forget(&mut self, run: &str) {
        if self.set.remove(run) {
            self.order.retain(|r| r != run);
        }
    }

    pub(super) fn insert(&mut self, run: &str) {
        if self.set.insert(run.to_string()) {
            self.order.push_back(run.to_string());
            while self.order.len() > self.limit {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}
