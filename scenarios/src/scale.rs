//! Scale, simulated: a pool of many launchers and thousands of runs with faults, in sim
//! mode. What it reports (virtual time to drain the queue, runs per launcher, claims
//! refused) is how the pool behaves past one machine; every invariant still holds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use protocol::{Arch, RunState};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::{
    BackendTopology, Behaviour, BinaryKind, DockerKind, DockerTopology, Expectations, Fault,
    LauncherTopology, Phase, Scenario, ScheduleStep, Step, Topology, WorkerVersion,
};
use crate::{Report, ScenarioError};

#[derive(Debug, Clone)]
pub struct ScaleOptions {
    pub launchers: usize,
    pub runs: usize,
    pub capacity: u32,
    /// One fault (connection drop, HTTP 503 storm, duplicate or late message) per this
    /// many runs; 0: none.
    pub fault_every: usize,
    pub seed: u64,
}

impl Default for ScaleOptions {
    fn default() -> ScaleOptions {
        ScaleOptions {
            launchers: 100,
            runs: 10_000,
            capacity: 2,
            fault_every: 50,
            seed: 1,
        }
    }
}

/// What a scale run showed.
#[derive(Debug)]
pub struct ScaleReport {
    pub report: Report,
    /// Virtual time from the first run scheduled to the last one terminal.
    pub virtual_drain: Duration,
    /// Terminal runs per launcher (by the worker that held them).
    pub runs_per_launcher: BTreeMap<String, usize>,
    pub claims_refused: usize,
    pub faults: usize,
    pub real: Duration,
}

impl std::fmt::Display for ScaleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut counts: Vec<usize> = self.runs_per_launcher.values().copied().collect();
        counts.sort_unstable();
        let median = counts.get(counts.len() / 2).copied().unwrap_or(0);
        let total: usize = counts.iter().sum();
        let (min, max) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        writeln!(
            f,
            "verdict: {}",
            if self.report.passed { "PASS" } else { "FAIL" }
        )?;
        for x in self.report.failures.iter().take(20) {
            writeln!(f, "  ! {x}")?;
        }
        writeln!(f, "runs terminal: {total} on {} launchers", counts.len())?;
        writeln!(
            f,
            "runs per launcher: min {min}, median {median}, mean {:.1}, max {max}",
            total as f64 / counts.len().max(1) as f64
        )?;
        writeln!(f, "claims refused: {}", self.claims_refused)?;
        writeln!(f, "faults injected: {}", self.faults)?;
        writeln!(
            f,
            "virtual time to drain the queue: {}",
            humantime::format_duration(
                Duration::from_millis(self.virtual_drain.as_millis() as u64)
            )
        )?;
        write!(f, "real time: {:.1?}", self.real)
    }
}

fn launcher(i: usize) -> String {
    format!("l{i:03}")
}

/// The scale scenario: every run scheduled at once (a queue of `runs`), faults among them,
/// then a wait for each run's end. Runs last 1 to 20 s (virtual); one in ten exits 2.
pub fn scenario(o: &ScaleOptions) -> Scenario {
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let mut load = Vec::new();
    let mut drain = Vec::new();
    for i in 0..o.runs {
        if o.fault_every > 0 && i > 0 && i % o.fault_every == 0 {
            let l = launcher(rng.random_range(0..o.launchers));
            load.push(Step::Fault(match rng.random_range(0..4) {
                0 => Fault::DropConnection { launcher: l },
                1 => Fault::HttpErrors {
                    count: 3,
                    status: 503,
                    retry_after_secs: None,
                    path: None,
                },
                2 => Fault::DuplicateNextMessage { launcher: l },
                _ => Fault::DelayNextMessage {
                    launcher: l,
                    by: Duration::from_millis(rng.random_range(100..2000)),
                },
            }));
        }
        let name = format!("r{i:05}");
        let exit_code = if rng.random_range(0..10) == 0 { 2 } else { 0 };
        load.push(Step::Schedule(ScheduleStep {
            run: name.clone(),
            image: None,
            run_type: protocol::api::RunType::Tracked,
            behaviour: Behaviour {
                stdout: vec![format!("run {i}")],
                exit_code,
                duration: Some(Duration::from_millis(rng.random_range(1_000..20_000))),
                ..Behaviour::default()
            },
            env: BTreeMap::new(),
            vendor: None,
        }));
        drain.push(Step::WaitRun {
            run: name,
            state: if exit_code == 0 {
                RunState::Finished
            } else {
                RunState::Failed
            },
            within: Duration::from_secs(24 * 3600),
        });
    }
    Scenario {
        description: format!("scale: {} launchers, {} runs", o.launchers, o.runs),
        seed: o.seed,
        topology: Topology {
            backend: BackendTopology {
                lease_ttl: Duration::from_secs(30),
                heartbeat_interval: Duration::from_secs(10),
            },
            dockers: vec![DockerTopology {
                name: "d1".into(),
                arch: Arch::Amd64,
                api_version: None,
                images: Vec::new(),
                kind: DockerKind::Fake,
            }],
            launchers: (0..o.launchers)
                .map(|i| LauncherTopology {
                    name: launcher(i),
                    docker: "d1".into(),
                    capacity: o.capacity,
                    env: BTreeMap::new(),
                    autostart: true,
                })
                .collect(),
            worker_versions: vec![WorkerVersion {
                version: "v1".into(),
                arch: Arch::Amd64,
                kind: BinaryKind::Elf,
            }],
        },
        phases: vec![
            Phase {
                name: "load".into(),
                steps: load,
            },
            Phase {
                name: "drain".into(),
                steps: drain,
            },
        ],
        expect: Expectations::default(),
        modes: Some(vec![crate::Mode::Sim]),
        mode_reason: Some("thousands of runs on one machine only fit in virtual time".into()),
    }
}

/// Runs the scale scenario in sim mode (blocking) and reads the figures off the backend's
/// events.
pub fn run(o: &ScaleOptions) -> Result<ScaleReport, ScenarioError> {
    let s = scenario(o);
    let started = Instant::now();
    let mut stats = None;
    let report = crate::execute_sim_with(&s, o.seed, |world| {
        stats = Some(figures(world));
    })?;
    let (virtual_drain, runs_per_launcher, claims_refused, faults) = stats.unwrap_or_default();
    Ok(ScaleReport {
        report,
        virtual_drain,
        runs_per_launcher,
        claims_refused,
        faults,
        real: started.elapsed(),
    })
}

type Figures = (Duration, BTreeMap<String, usize>, usize, usize);

fn figures(world: &crate::world::World) -> Figures {
    use fake_backend::kinds;
    let Some(b) = &world.backend else {
        return Figures::default();
    };
    let events = b.events();
    let first = events
        .iter()
        .find(|e| e.kind == kinds::RUN_CREATED)
        .map(|e| e.at_ms);
    let last = events
        .iter()
        .filter(|e| e.kind == kinds::RUN_TRANSITION)
        .filter(|e| {
            e.str("to")
                .is_some_and(|t| matches!(t, "finished" | "failed" | "canceled"))
        })
        .map(|e| e.at_ms)
        .max();
    let drain = match (first, last) {
        (Some(a), Some(z)) => Duration::from_millis(z.saturating_sub(a)),
        _ => Duration::ZERO,
    };
    let mut per: BTreeMap<String, usize> = world.launchers.keys().map(|n| (n.clone(), 0)).collect();
    for r in b.runs() {
        if r.state.is_terminal() {
            if let Some(l) = r
                .worker
                .as_deref()
                .and_then(|w| world.launcher_of_worker(w))
            {
                *per.entry(l.to_string()).or_default() += 1;
            }
        }
    }
    let refused = events
        .iter()
        .filter(|e| e.kind == kinds::CLAIM_REFUSED)
        .count();
    let faults = events
        .iter()
        .filter(|e| e.kind == kinds::FAULT_INJECTED)
        .count();
    (drain, per, refused, faults)
}
