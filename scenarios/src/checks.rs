//! The invariants every scenario must keep (DESIGN.md), the scenario's own expectations,
//! and the canonical trace used to prove determinism.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use fake_backend::{kinds, Event};
use launcher::container_spec::labels;
use protocol::RunState;

use crate::launcher_node::NodeExit;
use crate::model::{Scenario, Step};
use crate::secrets::Secrets;
use crate::world::World;

/// Checks the invariants; returns one message per violation.
pub fn invariants(scenario: &Scenario, world: &World) -> Vec<String> {
    let mut out = Vec::new();
    let backend = world.backend();
    let events = backend.events();

    // 1. Every scheduled run ends in exactly one terminal state, through legal steps.
    for (name, ulid) in &world.runs {
        let Some(run) = backend.run(ulid) else {
            out.push(format!("run {name}: unknown to the backend"));
            continue;
        };
        let terminals = run.history.iter().filter(|s| s.is_terminal()).count();
        if terminals != 1 || !run.state.is_terminal() {
            out.push(format!(
                "run {name}: expected exactly one terminal state, history {:?}",
                run.history
            ));
        }
        for w in run.history.windows(2) {
            if w[0] != w[1] && !w[0].can_move_to(w[1]) {
                out.push(format!(
                    "run {name}: illegal transition {} -> {}",
                    w[0], w[1]
                ));
            }
        }
    }

    // 2. No run started twice: one granted claim, one container created per run.
    let mut grants: BTreeMap<&str, usize> = BTreeMap::new();
    for e in events.iter().filter(|e| e.kind == kinds::CLAIM_GRANTED) {
        let repeat = e
            .data
            .get("repeat")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        if let (Some(run), false) = (e.run.as_deref(), repeat) {
            *grants.entry(run).or_default() += 1;
        }
    }
    for (name, ulid) in &world.runs {
        if grants.get(ulid.as_str()).copied().unwrap_or(0) > 1 {
            out.push(format!("run {name}: claimed more than once"));
        }
    }
    let mut creates: BTreeMap<String, usize> = BTreeMap::new();
    for d in world.dockers.values() {
        let Some(fake) = &d.fake else { continue };
        for e in fake.admin().events() {
            if e.kind == "container" && e.action == "start" {
                if let Some(run) = e.attributes.get(labels::RUN_ID) {
                    *creates.entry(run.to_ascii_uppercase()).or_default() += 1;
                }
            }
        }
    }
    for (name, ulid) in &world.runs {
        let n = creates
            .get(&ulid.to_ascii_uppercase())
            .copied()
            .unwrap_or(0);
        if n > 1 {
            out.push(format!("run {name}: {n} containers started"));
        }
    }

    // 2b. A launcher reports a run's end after all its output: it sends nothing for a run
    //     once it has reported the run's terminal state (the run's outbox is in order).
    out.extend(nothing_after_the_end(world, &events));

    // 2c. A launcher says it holds (its heartbeats' `runs`) only runs the backend granted
    //     it, under this identity or an earlier one it named when registering (a restart
    //     counts its predecessor's leftovers until it has reported them): one counted as
    //     held before its grant takes a slot it may never get.
    out.extend(held_only_when_granted(world, &events));

    // 2d. Memory: no run's outbox held more output than its bound allows (sim mode, where
    //     the launcher's metrics are at hand).
    for (name, l) in &world.launchers {
        let starts = l.disk.starts.lock().unwrap_or_else(|p| p.into_inner());
        for (i, s) in starts.iter().enumerate() {
            let peak = s.metrics.outbox_run_peak();
            if peak > s.run_queued_limit {
                out.push(format!(
                    "launcher {name} (start {}): a run's outbox held {peak} bytes of output, over its limit of {}",
                    i + 1,
                    s.run_queued_limit
                ));
            }
        }
    }

    // 3. No container left behind.
    for (dname, d) in &world.dockers {
        let Some(fake) = &d.fake else { continue };
        for c in fake.admin().containers() {
            if c.labels.contains_key(labels::RUN_ID) {
                out.push(format!(
                    "docker {dname}: container {} ({}) left behind",
                    c.name, c.status
                ));
            }
        }
    }

    // 4. Capacity never exceeded: replay container starts and exits per worker.
    let capacity: BTreeMap<String, u32> = world
        .launchers
        .values()
        .filter_map(|l| l.worker_ulid.clone().map(|w| (w, l.topology.capacity)))
        .collect();
    for (dname, d) in &world.dockers {
        let Some(fake) = &d.fake else { continue };
        let mut running: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for e in fake.admin().events() {
            // A restart that forgets containers ends them without die events.
            if e.kind == "daemon"
                && e.action == "restart"
                && e.attributes.get("keep_containers").map(String::as_str) != Some("true")
            {
                running.clear();
                continue;
            }
            if e.kind != "container" {
                continue;
            }
            let Some(worker) = e.attributes.get(labels::WORKER) else {
                continue;
            };
            let set = running.entry(worker.clone()).or_default();
            match e.action.as_str() {
                "start" => {
                    set.insert(e.id.clone());
                    let cap = capacity.get(worker).copied().unwrap_or(u32::MAX);
                    if set.len() as u32 > cap {
                        out.push(format!(
                            "docker {dname}: worker {} ran {} containers at once (capacity {cap})",
                            world.launcher_of_worker(worker).unwrap_or(worker),
                            set.len()
                        ));
                    }
                }
                "die" | "destroy" => {
                    set.remove(&e.id);
                }
                _ => {}
            }
        }
    }

    // 5. Drained workers take no new run.
    let mut drained: BTreeSet<String> = BTreeSet::new();
    for e in &events {
        let Some(w) = e.worker.clone() else { continue };
        match e.kind.as_str() {
            k if k == kinds::WORKER_DRAIN => {
                drained.insert(w);
            }
            k if k == kinds::WORKER_UNDRAIN => {
                drained.remove(&w);
            }
            // A holder re-claiming its own run (`repeat`) takes nothing new.
            k if k == kinds::CLAIM_GRANTED
                && drained.contains(&w)
                && e.data.get("repeat").and_then(|v| v.as_bool()) != Some(true) =>
            {
                out.push(format!(
                    "launcher {} claimed run {} while drained",
                    world.launcher_of_worker(&w).unwrap_or(&w),
                    run_name(world, e)
                ))
            }
            _ => {}
        }
    }

    // 6. Every result reached the backend: terminal runs whose container ran to an exit
    //    carry their exit code, and their output arrived in order (masked as the
    //    launcher must mask it).
    let masked = masked_values(world);
    let stdout = scheduled_stdout(scenario);
    for (name, ulid) in &world.runs {
        let Some(run) = backend.run(ulid) else {
            continue;
        };
        let ran = run.history.contains(&RunState::Running);
        let exited = matches!(run.state, RunState::Finished)
            || run
                .reason
                .as_ref()
                .is_some_and(|r| r.code == "nonzero_exit");
        if ran && exited && run.exit_code.is_none() {
            out.push(format!(
                "run {name}: ended {} without an exit code",
                run.state
            ));
        }
        if exited {
            if let Some(expected) = stdout.get(name.as_str()) {
                let texts: Vec<&str> = run.log_lines.iter().map(|l| l.text.as_str()).collect();
                let mut at = 0;
                for want in expected.iter() {
                    let want = mask(&masked, want);
                    match texts[at..].iter().position(|t| t.contains(want.as_str())) {
                        Some(p) => at += p + 1,
                        None => {
                            out.push(format!(
                                "run {name}: output line {want:?} missing or out of order"
                            ));
                            break;
                        }
                    }
                }
                let seqs: Vec<u64> = run.log_lines.iter().map(|l| l.seq).collect();
                if seqs.windows(2).any(|w| w[1] != w[0] + 1) {
                    out.push(format!("run {name}: log sequence has gaps or repeats"));
                }
            }
        }
    }
    out
}

/// Every value a launcher of this world masks, and each line of a multi-line one (a
/// container prints it as several lines), longest first.
fn nothing_after_the_end(world: &World, events: &[Event]) -> Vec<String> {
    let mut ended: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut out = Vec::new();
    for e in events {
        let (Some(run), Some(worker)) = (e.run.as_deref(), e.worker.as_deref()) else {
            continue;
        };
        let data = |k: &str| e.data.get(k);
        if e.kind == kinds::RUN_TRANSITION
            && data("by").and_then(|v| v.as_str()) == Some("worker")
            && data("to")
                .and_then(|v| serde_json::from_value::<RunState>(v.clone()).ok())
                .is_some_and(|s| s.is_terminal())
        {
            ended.entry((run, worker)).or_insert(e.seq);
        } else if e.kind == kinds::LOGS_RECEIVED
            && data("accepted").and_then(|v| v.as_u64()).unwrap_or(0) > 0
        {
            if let Some(end) = ended.get(&(run, worker)) {
                out.push(format!(
                    "run {}: output accepted (event {}) after the launcher reported its end (event {end})",
                    run_name(world, e),
                    e.seq
                ));
            }
        }
    }
    out
}

fn held_only_when_granted(world: &World, events: &[Event]) -> Vec<String> {
    held_before_granted(events)
        .into_iter()
        .map(|(run, worker, seq)| {
            let name = world
                .runs
                .iter()
                .find(|(_, u)| u.as_str() == run)
                .map_or(run, |(n, _)| n.as_str());
            format!(
                "launcher {} reported holding run {name} (event {seq}) before the backend granted it",
                world.launcher_of_worker(worker).unwrap_or(worker),
            )
        })
        .collect()
}

/// `(run, worker, event seq)`: the first heartbeat of each launcher naming a run the
/// backend had not granted it yet.
fn held_before_granted(events: &[Event]) -> Vec<(&str, &str, u64)> {
    // Each worker identity -> the first identity of its launcher.
    let mut lineage: BTreeMap<&str, &str> = BTreeMap::new();
    let mut granted: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut reported: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut out = Vec::new();
    for e in events {
        let Some(worker) = e.worker.as_deref() else {
            continue;
        };
        if e.kind == kinds::WORKER_REGISTERED {
            let previous = e.str("previous_worker_ulid");
            let root = previous.map_or(worker, |p| lineage.get(p).copied().unwrap_or(p));
            lineage.insert(worker, root);
            continue;
        }
        let root = lineage.get(worker).copied().unwrap_or(worker);
        if e.kind == kinds::CLAIM_GRANTED {
            if let Some(run) = e.run.as_deref() {
                granted.insert((run, root));
            }
            continue;
        }
        let message = e.data.get("message");
        let is_heartbeat = e.kind == kinds::MESSAGE_RECEIVED
            && message.and_then(|m| m.get("type")).and_then(|t| t.as_str())
                == Some("worker.heartbeat");
        let held = message
            .and_then(|m| m.get("runs"))
            .and_then(|r| r.as_array());
        let (true, Some(held)) = (is_heartbeat, held) else {
            continue;
        };
        for run in held.iter().filter_map(|r| r.as_str()) {
            if !granted.contains(&(run, root)) && reported.insert((run, root)) {
                out.push((run, worker, e.seq));
            }
        }
    }
    out
}

fn masked_values(world: &World) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in world.launchers.values() {
        for v in crate::secrets::masked_values(&l.topology.env) {
            out.extend(v.lines().filter(|l| !l.is_empty()).map(str::to_string));
            out.push(v);
        }
    }
    out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out.dedup();
    out
}

fn mask(values: &[String], line: &str) -> String {
    values.iter().fold(line.to_string(), |acc, v| {
        acc.replace(v.as_str(), launcher::masking::MASK)
    })
}

/// Each run's expected stdout: the first schedule step naming it with some output.
fn scheduled_stdout(scenario: &Scenario) -> HashMap<&str, &Vec<String>> {
    let mut out = HashMap::new();
    for step in scenario.phases.iter().flat_map(|p| &p.steps) {
        if let Step::Schedule(s) = step {
            if !s.behaviour.stdout.is_empty() {
                out.entry(s.run.as_str()).or_insert(&s.behaviour.stdout);
            }
        }
    }
    out
}

fn run_name(world: &World, e: &Event) -> String {
    e.run
        .as_deref()
        .and_then(|u| world.runs.iter().find(|(_, x)| x == u))
        .map(|(n, _)| n.clone())
        .unwrap_or_else(|| e.run.clone().unwrap_or_default())
}

/// The scenario's `expect:` section.
pub fn expectations(scenario: &Scenario, world: &World) -> Vec<String> {
    let mut out = Vec::new();
    let backend = world.backend();
    for (name, exp) in &scenario.expect.runs {
        let Some(ulid) = world.run_ulid(name) else {
            out.push(format!("run {name}: never scheduled"));
            continue;
        };
        let Some(run) = backend.run(ulid) else {
            out.push(format!("run {name}: unknown to the backend"));
            continue;
        };
        if let Some(state) = &exp.state {
            if run.state != *state {
                out.push(format!(
                    "run {name}: expected state {state}, got {} (reason {:?})",
                    run.state,
                    run.reason
                        .as_ref()
                        .map(|r| format!("{}: {}", r.code, r.message))
                ));
            }
        }
        if !exp.one_of.is_empty() && !exp.one_of.contains(&run.state) {
            out.push(format!(
                "run {name}: expected one of {:?}, got {} (reason {:?})",
                exp.one_of.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                run.state,
                run.reason
                    .as_ref()
                    .map(|r| format!("{}: {}", r.code, r.message))
            ));
        }
        if let Some(code) = exp.exit_code {
            if run.exit_code != Some(code) {
                out.push(format!(
                    "run {name}: expected exit code {code}, got {:?}",
                    run.exit_code
                ));
            }
        }
        if let Some(reason) = &exp.reason {
            if run.reason.as_ref().map(|r| r.code.as_str()) != Some(reason.as_str()) {
                out.push(format!(
                    "run {name}: expected reason {reason}, got {:?}",
                    run.reason
                        .as_ref()
                        .map(|r| format!("{}: {}", r.code, r.message))
                ));
            }
        }
        if let Some(v) = &exp.worker_version {
            if run.worker_version.as_deref() != Some(v.as_str()) {
                out.push(format!(
                    "run {name}: expected worker version {v}, got {:?}",
                    run.worker_version
                ));
            }
        }
        if let Some(l) = &exp.launcher {
            let got = run
                .worker
                .as_deref()
                .and_then(|w| world.launcher_of_worker(w));
            if got != Some(l.as_str()) {
                out.push(format!("run {name}: expected launcher {l}, got {got:?}"));
            }
        }
        for want in &exp.logs_contain {
            if !run.log_lines.iter().any(|l| l.text.contains(want.as_str())) {
                out.push(format!("run {name}: logs do not contain {want:?}"));
            }
        }
    }
    for (name, exp) in &scenario.expect.launchers {
        let exits = &world.launchers[name].exits;
        let first_exit = exits
            .iter()
            .find(|e| !matches!(e, crate::launcher_node::NodeExit::Crashed));
        if let Some(code) = exp.exit_code {
            match first_exit {
                Some(crate::launcher_node::NodeExit::Exited { code: got, .. }) if *got == code => {}
                other => out.push(format!(
                    "launcher {name}: expected exit code {code}, got {}",
                    other
                        .map(NodeExit::describe)
                        .unwrap_or_else(|| "no exit".into())
                )),
            }
        }
        if let Some(text) = &exp.error_contains {
            let ok = exits.iter().any(|e| {
                matches!(e, crate::launcher_node::NodeExit::Exited { error: Some(m), .. } if m.contains(text.as_str()))
            });
            if !ok {
                out.push(format!(
                    "launcher {name}: expected an error containing {text:?}, got {:?}",
                    exits.iter().map(NodeExit::describe).collect::<Vec<_>>()
                ));
            }
        }
    }
    out
}

/// The trace that must be identical on every repeat with the same seed: each run's ULID,
/// state history and outcome (in schedule order, by scenario name), each launcher's exits.
/// Which launcher took a run is included only where the scenario expects one: under
/// contention, placement follows the order in which runs finish, which real time decides.
pub fn canonical(scenario: &Scenario, world: &World) -> Vec<String> {
    let backend = world.backend();
    let mut lines = Vec::new();
    for (name, ulid) in &world.runs {
        let Some(run) = backend.run(ulid) else {
            continue;
        };
        let history: Vec<&str> = run.history.iter().map(|s| s.as_str()).collect();
        let launcher = run
            .worker
            .as_deref()
            .and_then(|w| world.launcher_of_worker(w))
            .filter(|_| {
                scenario
                    .expect
                    .runs
                    .get(name)
                    .is_some_and(|e| e.launcher.is_some())
            })
            .unwrap_or("-");
        lines.push(format!(
            "run {name} [{ulid}]: {} | exit {} | reason {} | launcher {launcher} | worker {}",
            history.join(" -> "),
            run.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            run.reason.as_ref().map(|r| r.code.as_str()).unwrap_or("-"),
            run.worker_version.as_deref().unwrap_or("-"),
        ));
    }
    for (name, l) in &world.launchers {
        let exits: Vec<String> = l.exits.iter().map(NodeExit::describe).collect();
        lines.push(format!("launcher {name}: {}", exits.join(", ")));
    }
    lines
}

/// Events the backend wrote from what the harness told it, not from what a launcher sent
/// (a scheduled run's spec holds whatever the scenario put in its env).
const HARNESS_EVENTS: &[&str] = &[
    kinds::RUN_CREATED,
    kinds::RUN_QUEUED,
    kinds::RUN_OFFERED,
    kinds::MESSAGE_SENT,
    kinds::FAULT_INJECTED,
    kinds::FAULT_TRIGGERED,
    kinds::POOL_CREATED,
    kinds::POOL_RESET,
    kinds::BINARY_PUBLISHED,
];

/// Each launcher's log output, read once per capture (in sim mode all launchers share one,
/// which a scale run makes large: read and searched once, not once per launcher).
fn launcher_logs(world: &World) -> BTreeMap<&str, Arc<str>> {
    let mut read: Vec<(&crate::launcher_node::Captured, Arc<str>)> = Vec::new();
    let mut out = BTreeMap::new();
    for (name, l) in &world.launchers {
        let text = match read.iter().find(|(c, _)| c.same_as(&l.output)) {
            Some((_, t)) => t.clone(),
            None => {
                let t: Arc<str> = l.output.text().into();
                read.push((&l.output, t.clone()));
                t
            }
        };
        out.insert(name.as_str(), text);
    }
    out
}

/// Everything a secret must never reach, as (where, text): each launcher's log output and
/// exit errors, and what the backend received (run logs, reasons, events).
pub fn outputs(world: &World) -> Vec<(String, Arc<str>)> {
    outputs_with(world, &launcher_logs(world))
}

fn outputs_with(world: &World, logs: &BTreeMap<&str, Arc<str>>) -> Vec<(String, Arc<str>)> {
    let mut out: Vec<(String, Arc<str>)> = Vec::new();
    for (name, l) in &world.launchers {
        if let Some(text) = logs.get(name.as_str()) {
            out.push((format!("launcher {name}'s log output"), text.clone()));
        }
        for exit in &l.exits {
            if let crate::launcher_node::NodeExit::Exited { error: Some(e), .. } = exit {
                out.push((format!("launcher {name}'s exit error"), e.as_str().into()));
            }
        }
    }
    let backend = world.backend();
    for (name, ulid) in &world.runs {
        let Some(run) = backend.run(ulid) else {
            continue;
        };
        // Joined, so a multi-line value printed over several lines is found whole too.
        let logs: Vec<&str> = run.log_lines.iter().map(|l| l.text.as_str()).collect();
        out.push((
            format!("run {name}'s logs at the backend"),
            logs.join("\n").into(),
        ));
        if let Some(r) = &run.reason {
            out.push((format!("run {name}'s reason"), r.message.as_str().into()));
        }
    }
    for e in backend.events() {
        if !HARNESS_EVENTS.contains(&e.kind.as_str()) {
            let text = serde_json::to_string(&e).unwrap_or_default();
            out.push((
                format!("backend event {} (seq {})", e.kind, e.seq),
                text.into(),
            ));
        }
    }
    out
}

/// The secret oracle: one failure per secret found in any output. A text shared by several
/// outputs (one capture) is searched once.
pub fn secret_leaks<T: AsRef<str>>(secrets: &Secrets, outputs: &[(String, T)]) -> Vec<String> {
    let mut searched: HashMap<(*const u8, usize), Vec<&str>> = HashMap::new();
    let mut out = Vec::new();
    for (source, text) in outputs {
        let text = text.as_ref();
        let found = searched
            .entry((text.as_ptr(), text.len()))
            .or_insert_with(|| secrets.leaked(text));
        out.extend(
            found
                .iter()
                .map(|label| format!("secret leaked: {label} appears in {source}")),
        );
    }
    out
}

/// The oracle over a finished world.
pub fn secrets_kept(world: &World) -> Vec<String> {
    let logs = launcher_logs(world);
    let mut out = secret_leaks(&Secrets::of_world(world), &outputs_with(world, &logs));
    // A launcher that registered has logged: an empty capture would make the oracle blind.
    let mut registered: HashMap<(*const u8, usize), bool> = HashMap::new();
    for (name, l) in &world.launchers {
        let text = &logs[name.as_str()];
        let logged = *registered
            .entry((text.as_ptr(), text.len()))
            .or_insert_with(|| text.contains("registered"));
        if l.worker_ulid.is_some() && !logged {
            out.push(format!(
                "launcher {name}: its log output was not captured (the secret oracle is blind)"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Report, Trace};
    use serde_json::{json, Value};

    fn event(seq: u64, kind: &str, worker: &str, run: Option<&str>, data: Value) -> Event {
        Event {
            seq,
            at_ms: seq,
            kind: kind.to_string(),
            pool: None,
            worker: Some(worker.to_string()),
            run: run.map(str::to_string),
            data,
        }
    }

    fn heartbeat(seq: u64, worker: &str, runs: &[&str]) -> Event {
        let message = json!({ "type": "worker.heartbeat", "worker_ulid": worker, "runs": runs });
        event(
            seq,
            kinds::MESSAGE_RECEIVED,
            worker,
            None,
            json!({ "message": message }),
        )
    }

    #[test]
    fn a_run_reported_held_before_its_grant_is_a_failure() {
        let registered = |seq, w: &str, previous: Option<&str>| {
            let data = json!({ "previous_worker_ulid": previous });
            event(seq, kinds::WORKER_REGISTERED, w, None, data)
        };
        let granted = |seq, w: &str, run| event(seq, kinds::CLAIM_GRANTED, w, Some(run), json!({}));
        let events = vec![
            registered(1, "W1", None),
            heartbeat(2, "W1", &[]),
            heartbeat(3, "W1", &["R1"]),
            heartbeat(4, "W1", &["R1"]),
            granted(5, "W1", "R1"),
            heartbeat(6, "W1", &["R1"]),
            // A restart naming its predecessor may count the predecessor's runs.
            registered(7, "W2", Some("W1")),
            heartbeat(8, "W2", &["R1"]),
            registered(9, "W3", Some("W2")),
            heartbeat(10, "W3", &["R1"]),
            // Another launcher was never granted R1.
            registered(11, "X1", None),
            granted(12, "X1", "R2"),
            heartbeat(13, "X1", &["R1", "R2"]),
        ];
        assert_eq!(
            held_before_granted(&events),
            [("R1", "W1", 3), ("R1", "X1", 13)]
        );
    }

    #[test]
    fn a_secret_in_captured_launcher_output_fails_the_verdict() {
        let mut secrets = Secrets::default();
        secrets.add_masked("launcher l1's masked value", "s3cr3t-token-value");
        let clean = vec![(
            "launcher l1's log output".to_string(),
            "INFO run finished run_ulid=01ABC exit_code=0 output=*****".to_string(),
        )];
        assert!(secret_leaks(&secrets, &clean).is_empty());

        let leaky = vec![(
            "launcher l1's log output".to_string(),
            "DEBUG creating container env=[\"TOKEN=s3cr3t-token-value\"]".to_string(),
        )];
        let failures = secret_leaks(&secrets, &leaky);
        let report = Report {
            seed: 1,
            mode: crate::model::Mode::Wire,
            passed: failures.is_empty(),
            failures,
            trace: Trace::default(),
            full: Vec::new(),
        };
        assert!(!report.passed);
        assert!(
            report.failures[0].contains("launcher l1's masked value")
                && report.failures[0].contains("launcher l1's log output"),
            "{:?}",
            report.failures
        );
        assert!(
            !report.failures[0].contains("s3cr3t"),
            "never the value itself"
        );
    }
}
