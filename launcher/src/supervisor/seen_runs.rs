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

#[cfg(test)]
mod tests {
    use super::SeenRuns;

    #[test]
    fn beyond_the_limit_the_oldest_run_is_forgotten_first() {
        let mut seen = SeenRuns::new(2);
        seen.insert("A");
        seen.insert("B");
        assert!(seen.contains("A") && seen.contains("B"), "both fit");
        seen.insert("C");
        assert!(!seen.contains("A"), "the oldest goes");
        assert!(seen.contains("B") && seen.contains("C"));
    }

    #[test]
    fn a_forgotten_run_leaves_the_order_of_the_others_alone() {
        let mut seen = SeenRuns::new(2);
        seen.insert("A");
        seen.insert("B");
        seen.forget("A");
        assert!(!seen.contains("A"));
        seen.insert("C");
        assert!(
            seen.contains("B") && seen.contains("C"),
            "room was made by forgetting"
        );
        seen.insert("D");
        assert!(!seen.contains("B"), "B is now the oldest");
        assert!(seen.contains("C") && seen.contains("D"));
        seen.insert("A");
        assert!(seen.contains("A"), "a forgotten run can be seen again");
    }
}
