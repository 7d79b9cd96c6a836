//! The engine's hooks that build a [`Timeline`]: the steps as they run (with their times and
//! launcher starts and exits seen between them), then, at the end, the backend's and the
//! fake daemons' event logs mapped onto the same axis. Secrets are redacted here, while
//! the world (which knows them) is at hand.

use std::collections::BTreeMap;

use fake_backend::{kinds, Event};
use launcher::container_spec::labels;
use serde_json::Value;
use tokio::time::Instant;

use super::describe::{
    compact, is_fault, short_id, step_parts, transition_data, DOCKER_QUIET, QUIET, SPEC_EVENTS,
};
use super::{LaneKind, Mark, MarkKind, ReportText, Span, Timeline};
use crate::launcher_node::NodeExit;
use crate::model::Step;
use crate::report::Trace;
use crate::secrets::Secrets;
use crate::world::World;

/// Hover details longer than this are cut (a flood of output must not make the file huge).
const DETAIL_MAX: usize = 600;
/// Output lines shown in the hover title of a run's end.
const LAST_LOG_LINES: usize = 3;

/// Collects a timeline while the engine runs. Times are ms since [`Recorder::start`].
pub struct Recorder {
    start: Instant,
    timeline: Timeline,
    /// The backend's clock read beside ours: (our ms, its ms, its last event's seq).
    backend_anchors: Vec<(u64, u64, u64)>,
    /// Every worker ULID a launcher had (a restart may register a new one).
    workers: BTreeMap<String, String>,
    exits_seen: BTreeMap<String, usize>,
    up_since: BTreeMap<String, u64>,
    /// When [`Recorder::observe`] first ran (the world built).
    first_look: Option<u64>,
}

impl Recorder {
    /// Call before the world is built: the axis starts here.
    pub fn start() -> Recorder {
        Recorder {
            start: Instant::now(),
            timeline: Timeline::default(),
            backend_anchors: Vec::new(),
            workers: BTreeMap::new(),
            exits_seen: BTreeMap::new(),
            up_since: BTreeMap::new(),
            first_look: None,
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Notes launcher starts and exits since the last look (call after building the world).
    pub fn observe(&mut self, world: &World) {
        let now = self.now_ms();
        self.first_look.get_or_insert(now);
        if let Some(b) = &world.backend {
            self.backend_anchors.push((now, b.now_ms(), b.last_seq()));
        }
        for (name, l) in &world.launchers {
            let lane = self.timeline.lane(LaneKind::Launcher, name);
            if let Some(w) = &l.worker_ulid {
                self.workers.insert(w.clone(), name.clone());
            }
            let seen = self.exits_seen.entry(name.clone()).or_default();
            for exit in l.exits.iter().skip(*seen) {
                if let Some(from) = self.up_since.remove(name) {
                    self.timeline.spans.push(up_span(lane, from, now));
                }
                let (kind, label) = match exit {
                    NodeExit::Crashed => (MarkKind::Fault, "crashed".to_string()),
                    NodeExit::Exited { code, .. } => (MarkKind::Exit, format!("exit {code}")),
                };
                self.timeline.marks.push(Mark {
                    at_ms: now,
                    lane,
                    kind,
                    label,
                    detail: format!("launcher {name}: {}", exit.describe()),
                });
            }
            *seen = l.exits.len();
            if l.node.is_some() && !self.up_since.contains_key(name) {
                self.up_since.insert(name.clone(), now);
            }
        }
    }

    /// Records a step that began at `began_ms` and has just ended (`failure`: why the
    /// scenario failed at it).
    pub fn step(
        &mut self,
        world: &World,
        phase: &str,
        step: &Step,
        began_ms: u64,
        failure: Option<&str>,
    ) {
        let now = self.now_ms();
        let (name, args) = step_parts(step);
        let lane = ["run", "launcher", "docker"]
            .iter()
            .zip([LaneKind::Run, LaneKind::Launcher, LaneKind::Docker])
            .find_map(|(key, kind)| args.get(*key).and_then(Value::as_str).map(|n| (kind, n)))
            .map(|(kind, n)| self.timeline.lane(kind, n))
            .unwrap_or_else(|| self.timeline.lane(LaneKind::World, "backend"));
        let faulty = name.starts_with("fault")
            || matches!(
                name.as_str(),
                "crash_launcher" | "restart_docker" | "restart_backend"
            );
        let detail = format!("phase {phase:?}: {name} {}", compact(&args));
        if now > began_ms {
            self.timeline.spans.push(Span {
                lane,
                from_ms: began_ms,
                to_ms: now,
                state: "wait".into(),
                detail: detail.clone(),
                label: String::new(),
            });
        }
        self.timeline.marks.push(Mark {
            at_ms: began_ms,
            lane,
            kind: if faulty {
                MarkKind::Fault
            } else {
                MarkKind::Step
            },
            label: name.replace('_', " "),
            detail: detail.clone(),
        });
        if let Some(msg) = failure {
            // Where the scenario gave up: the end of the step.
            self.timeline.marks.push(Mark {
                at_ms: now,
                lane,
                kind: MarkKind::Failure,
                label: format!("FAILED: {}", name.replace('_', " ")),
                detail: format!("{detail}\nFAILED: {msg}"),
            });
        }
        self.observe(world);
    }

    /// The finished timeline: launcher lifetimes closed, the backend's and daemons' events
    /// added, the report's `failures` and `trace` lines copied, every string redacted of
    /// the world's secrets, marks in time order.
    pub fn finish(mut self, world: &World, failures: &[String], trace: &Trace) -> Timeline {
        self.observe(world);
        let now = self.now_ms();
        for (name, from) in std::mem::take(&mut self.up_since) {
            let lane = self.timeline.lane(LaneKind::Launcher, &name);
            self.timeline.spans.push(up_span(lane, from, now));
        }
        let runs: BTreeMap<String, String> = world
            .runs
            .iter()
            .map(|(n, u)| (u.to_ascii_uppercase(), n.clone()))
            .collect();
        for (name, _) in &world.runs {
            self.timeline.lane(LaneKind::Run, name);
        }
        if let Some(backend) = &world.backend {
            let events = backend.events();
            let times = backend_times(&events, &self.backend_anchors);
            self.add_backend(world, &events, &times, &runs);
            self.add_run_spans(world, &events, &times, &runs, now);
        }
        self.add_dockers(world, &runs, now);

        let t = &mut self.timeline;
        t.marks.sort_by_key(|m| m.at_ms);
        // A launcher started while the world was built was first seen after: it was up
        // by its first event at the latest.
        let built = self.first_look.unwrap_or(0);
        for span in t
            .spans
            .iter_mut()
            .filter(|s| s.state == "up" && s.from_ms == built)
        {
            if let Some(m) = t.marks.iter().find(|m| m.lane == span.lane) {
                span.from_ms = span.from_ms.min(m.at_ms);
            }
        }
        t.end_ms = t
            .marks
            .iter()
            .map(|m| m.at_ms)
            .chain(t.spans.iter().map(|s| s.to_ms))
            .fold(now, u64::max)
            .max(1);
        self.timeline.text = Some(ReportText {
            failures: failures.to_vec(),
            notes: trace.notes.clone(),
            canonical: trace.canonical.clone(),
        });
        redact(&mut self.timeline, &Secrets::of_world(world));
        self.timeline
    }

    fn launcher_of(&self, world: &World, worker: &str) -> Option<String> {
        self.workers
            .get(worker)
            .cloned()
            .or_else(|| world.launcher_of_worker(worker).map(str::to_string))
    }

    fn add_backend(
        &mut self,
        world: &World,
        events: &[Event],
        times: &[u64],
        runs: &BTreeMap<String, String>,
    ) {
        for (e, &at_ms) in events.iter().zip(times) {
            if QUIET.contains(&e.kind.as_str()) {
                continue;
            }
            let launcher = e.worker.as_deref().and_then(|w| self.launcher_of(world, w));
            let run = e
                .run
                .as_deref()
                .and_then(|r| runs.get(&r.to_ascii_uppercase()));
            let lane = match (run, &launcher) {
                (Some(r), _) => self.timeline.lane(LaneKind::Run, r),
                (None, Some(l)) => self.timeline.lane(LaneKind::Launcher, l),
                (None, None) => self.timeline.lane(LaneKind::World, "backend"),
            };
            let mut label = e.kind.clone();
            if let (Some(_), Some(l)) = (run, &launcher) {
                label = format!("{label} ({l})");
            }
            let mut detail = format!("backend event #{} {}", e.seq, e.kind);
            if let Some(l) = &launcher {
                detail.push_str(&format!(" launcher {l}"));
            }
            if !SPEC_EVENTS.contains(&e.kind.as_str()) && !e.data.is_null() {
                detail.push_str(&format!(" {}", compact(&e.data)));
            }
            self.timeline.marks.push(Mark {
                at_ms,
                lane,
                kind: if is_fault(e) {
                    MarkKind::Fault
                } else {
                    MarkKind::Event
                },
                label,
                detail,
            });
        }
    }

    /// Each run's lane coloured by its state: from its creation, one span per state; the
    /// terminal state runs to the end of the axis, with the run's last output lines.
    fn add_run_spans(
        &mut self,
        world: &World,
        events: &[Event],
        times: &[u64],
        runs: &BTreeMap<String, String>,
        now: u64,
    ) {
        // Per run: (when, state, details, the launcher holding it).
        type Change = (u64, String, String, String);
        let mut changes: BTreeMap<&str, Vec<Change>> = BTreeMap::new();
        for (e, &at) in events.iter().zip(times) {
            let Some(name) = e
                .run
                .as_deref()
                .and_then(|r| runs.get(&r.to_ascii_uppercase()))
            else {
                continue;
            };
            let state = match e.kind.as_str() {
                k if k == kinds::RUN_CREATED => "scheduled".to_string(),
                k if k == kinds::RUN_TRANSITION => match e.str("to") {
                    Some(to) => to.to_string(),
                    None => continue,
                },
                _ => continue,
            };
            let detail = format!("run {name}: {state} {}", compact(&transition_data(&e.data)));
            let holder = e
                .worker
                .as_deref()
                .and_then(|w| self.launcher_of(world, w))
                .unwrap_or_default();
            changes
                .entry(name.as_str())
                .or_default()
                .push((at, state, detail, holder));
        }
        for (name, list) in changes {
            let lane = self.timeline.lane(LaneKind::Run, name);
            for (i, (from, state, detail, holder)) in list.iter().enumerate() {
                let to = list.get(i + 1).map(|n| n.0).unwrap_or(now);
                let mut detail = detail.clone();
                if i + 1 == list.len() {
                    detail.push_str(&last_lines(world, name));
                    self.timeline.marks.push(Mark {
                        at_ms: *from,
                        lane,
                        kind: MarkKind::Event,
                        label: state.clone(),
                        detail: detail.clone(),
                    });
                }
                self.timeline.spans.push(Span {
                    lane,
                    from_ms: *from,
                    to_ms: to.max(*from),
                    state: state.clone(),
                    detail,
                    label: holder.clone(),
                });
            }
        }
    }

    /// Each fake daemon's events: container events on their run's lane, the rest (pulls,
    /// restarts) on the daemon's. The daemon's clock is mapped through its `now`.
    fn add_dockers(&mut self, world: &World, runs: &BTreeMap<String, String>, now: u64) {
        for (dname, d) in &world.dockers {
            let Some(fake) = &d.fake else { continue };
            let daemon_now = fake.admin().now();
            for e in fake.admin().events() {
                if DOCKER_QUIET.contains(&e.action.as_str()) {
                    continue;
                }
                let Some(at) = e.at else { continue };
                let behind = (daemon_now - at).whole_milliseconds().max(0) as u64;
                let run = e
                    .attributes
                    .get(labels::RUN_ID)
                    .and_then(|r| runs.get(&r.to_ascii_uppercase()));
                let lane = match run {
                    Some(r) => self.timeline.lane(LaneKind::Run, r),
                    None => self.timeline.lane(LaneKind::Docker, dname),
                };
                let fault = e.kind == "daemon" || e.action == "oom";
                let attrs: Vec<String> = e
                    .attributes
                    .iter()
                    .filter(|(k, _)| !k.starts_with("com.spacelift") && *k != "image")
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                self.timeline.marks.push(Mark {
                    at_ms: now.saturating_sub(behind),
                    lane,
                    kind: if fault {
                        MarkKind::Fault
                    } else {
                        MarkKind::Event
                    },
                    label: format!("{} {}", e.kind, e.action),
                    detail: format!(
                        "docker {dname} #{}: {} {} {} {}",
                        e.seq,
                        e.kind,
                        e.action,
                        short_id(&e.id),
                        attrs.join(" ")
                    ),
                });
            }
        }
    }
}

fn up_span(lane: usize, from_ms: u64, to_ms: u64) -> Span {
    Span {
        lane,
        from_ms,
        to_ms,
        state: "up".into(),
        detail: "launcher running".into(),
        label: String::new(),
    }
}

/// Maps each backend event's clock onto the axis. A restarted backend's clock goes on from
/// its last event, not from when it stopped, so each backend lifetime (from one
/// `backend.started` to the next) has its own offset, taken from an anchor read during
/// it (1 ms low: an event is never placed after a step that saw it); a lifetime without
/// one goes on from the previous one's clock.
pub(super) fn backend_times(events: &[Event], anchors: &[(u64, u64, u64)]) -> Vec<u64> {
    let starts: Vec<u64> = events
        .iter()
        .filter(|e| e.kind == kinds::BACKEND_STARTED)
        .map(|e| e.seq)
        .collect();
    // The lifetime an event or anchor (by the last seq it saw) belongs to.
    let lifetime = |seq: u64| starts.iter().filter(|&&s| s <= seq).count();
    let mut offsets: BTreeMap<usize, i128> = BTreeMap::new();
    // Both clocks are read in whole ms (ours first), so `ours - theirs` can be up to 1 ms
    // high, which would place an event after a step that saw it; taken 1 ms low, an event
    // lands at most 2 ms early, never late.
    for &(ours, theirs, seq) in anchors {
        offsets
            .entry(lifetime(seq))
            .or_insert(ours as i128 - theirs as i128 - 1);
    }
    let mut offset: i128 = -(events.first().map_or(0, |e| e.at_ms) as i128);
    let mut current = usize::MAX;
    events
        .iter()
        .map(|e| {
            let l = lifetime(e.seq);
            if l != current {
                current = l;
                offset = offsets.get(&l).copied().unwrap_or(offset);
            }
            (e.at_ms as i128 + offset).max(0) as u64
        })
        .collect()
}

fn last_lines(world: &World, run: &str) -> String {
    let Some(run) = world
        .run_ulid(run)
        .and_then(|u| world.backend.as_ref()?.run(u))
    else {
        return String::new();
    };
    let skip = run.log_lines.len().saturating_sub(LAST_LOG_LINES);
    let lines: Vec<String> = run.log_lines[skip..]
        .iter()
        .map(|l| format!("\n  | {}", l.text))
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!("\nlast output:{}", lines.concat())
    }
}

/// Removes every secret the world knows from every string, then bounds the details.
fn redact(t: &mut Timeline, secrets: &Secrets) {
    let mut texts: Vec<&mut String> = Vec::new();
    texts.extend(t.lanes.iter_mut().map(|l| &mut l.name));
    for m in &mut t.marks {
        texts.push(&mut m.label);
        texts.push(&mut m.detail);
    }
    for s in &mut t.spans {
        texts.push(&mut s.state);
        texts.push(&mut s.label);
        texts.push(&mut s.detail);
    }
    if let Some(r) = &mut t.text {
        texts.extend(r.failures.iter_mut());
        texts.extend(r.notes.iter_mut());
        texts.extend(r.canonical.iter_mut());
    }
    secrets.redact_all(&mut texts);
    for m in &mut t.marks {
        m.detail = truncate(std::mem::take(&mut m.detail));
    }
    for s in &mut t.spans {
        s.detail = truncate(std::mem::take(&mut s.detail));
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > DETAIL_MAX {
        let mut at = DETAIL_MAX;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push_str(" …");
    }
    s
}
