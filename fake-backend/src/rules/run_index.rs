//! Indexes over the runs not yet terminal (the queue, each worker's held and offered runs),
//! so scheduling costs what it offers, not the length of the queue.

use std::collections::{BTreeSet, HashMap};

use protocol::RunState;

use crate::store::Run;

/// What one active run counts for in the indexes.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    /// Scheduled and offered to no one: waiting in the queue.
    queued: bool,
    /// The worker holding it (claimed, not terminal).
    held_by: Option<String>,
    /// The worker a scheduled run was offered to.
    offered_to: Option<String>,
}

impl Entry {
    fn of(run: &Run) -> Option<Entry> {
        if run.state.is_terminal() {
            return None;
        }
        let scheduled = run.state == RunState::Scheduled;
        Some(Entry {
            queued: scheduled && run.offered_to.is_none(),
            held_by: if scheduled { None } else { run.worker.clone() },
            offered_to: if scheduled {
                run.offered_to.clone()
            } else {
                None
            },
        })
    }
}

/// Derived from the runs, never persisted: [`RunIndex::update`] after a run changes.
#[derive(Debug, Default)]
pub(crate) struct RunIndex {
    entries: HashMap<String, Entry>,
    /// In ULID (creation) order, the queue's order.
    queued: BTreeSet<String>,
    held: HashMap<String, BTreeSet<String>>,
    offered: HashMap<String, BTreeSet<String>>,
}

fn add(map: &mut HashMap<String, BTreeSet<String>>, worker: &str, run: &str) {
    map.entry(worker.to_string())
        .or_default()
        .insert(run.to_string());
}

fn remove(map: &mut HashMap<String, BTreeSet<String>>, worker: &str, run: &str) {
    if let Some(set) = map.get_mut(worker) {
        set.remove(run);
        if set.is_empty() {
            map.remove(worker);
        }
    }
}

impl RunIndex {
    /// Re-files `id` as `run` now is (`None`: gone).
    pub(crate) fn update(&mut self, id: &str, run: Option<&Run>) {
        let new = run.and_then(Entry::of);
        if self.entries.get(id) == new.as_ref() {
            return;
        }
        if let Some(old) = self.entries.remove(id) {
            if old.queued {
                self.queued.remove(id);
            }
            if let Some(w) = &old.held_by {
                remove(&mut self.held, w, id);
            }
            if let Some(w) = &old.offered_to {
                remove(&mut self.offered, w, id);
            }
        }
        if let Some(new) = new {
            if new.queued {
                self.queued.insert(id.to_string());
            }
            if let Some(w) = &new.held_by {
                add(&mut self.held, w, id);
            }
            if let Some(w) = &new.offered_to {
                add(&mut self.offered, w, id);
            }
            self.entries.insert(id.to_string(), new);
        }
    }

    /// The first queued run after `after` (from the start when `None`).
    pub(crate) fn next_queued(&self, after: Option<&str>) -> Option<&String> {
        match after {
            None => self.queued.iter().next(),
            Some(a) => self
                .queued
                .range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                .next(),
        }
    }

    pub(crate) fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    /// Runs `worker` holds, in ULID order.
    pub(crate) fn held(&self, worker: &str) -> impl Iterator<Item = &String> {
        self.held.get(worker).into_iter().flatten()
    }

    /// Scheduled runs offered to `worker`, in ULID order.
    pub(crate) fn offered(&self, worker: &str) -> impl Iterator<Item = &String> {
        self.offered.get(worker).into_iter().flatten()
    }

    /// Held plus offered: what a worker's capacity is measured against.
    pub(crate) fn load(&self, worker: &str) -> usize {
        self.held.get(worker).map_or(0, BTreeSet::len)
            + self.offered.get(worker).map_or(0, BTreeSet::len)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use protocol::api::{RunSpec, RunType};

    use super::*;

    fn run(id: &str) -> Run {
        let spec = RunSpec {
            run_ulid: id.into(),
            stack_id: "s".into(),
            run_type: RunType::Tracked,
            image: None,
            env: BTreeMap::new(),
            vendor: None,
        };
        Run::scheduled(spec, "p".into())
    }

    #[test]
    fn a_run_moves_from_the_queue_to_an_offer_to_its_holder_and_out() {
        let mut ix = RunIndex::default();
        let mut r = run("A");
        ix.update("A", Some(&r));
        ix.update("B", Some(&run("B")));
        assert_eq!(ix.next_queued(None).map(String::as_str), Some("A"));
        assert_eq!(ix.next_queued(Some("A")).map(String::as_str), Some("B"));
        assert_eq!(ix.next_queued(Some("B")), None);

        r.offered_to = Some("w".into());
        ix.update("A", Some(&r));
        assert_eq!(ix.next_queued(None).map(String::as_str), Some("B"));
        assert_eq!(ix.offered("w").collect::<Vec<_>>(), ["A"]);
        assert_eq!(ix.load("w"), 1);

        r.offered_to = None;
        r.worker = Some("w".into());
        r.state = RunState::Claimed;
        ix.update("A", Some(&r));
        assert_eq!(ix.offered("w").count(), 0);
        assert_eq!(ix.held("w").collect::<Vec<_>>(), ["A"]);
        assert_eq!(ix.load("w"), 1);

        r.state = RunState::Finished;
        ix.update("A", Some(&r));
        assert_eq!((ix.held("w").count(), ix.load("w")), (0, 0));
        ix.update("B", None);
        assert!(!ix.has_queued());
    }
}
