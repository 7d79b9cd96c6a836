//! Scenario engine: drives the launcher against the fake backend and fake Docker daemon from
//! declarative YAML files (`scenarios/cases/*.yaml`).
//!
//! - [`model`]: the file format; [`parse`]: reading and checking files.
//! - [`world`]: the simulated world (backend, daemons, launchers) of one execution.
//! - [`launcher_node`]: an in-process launcher that can be signalled and crashed.
//! - [`engine`]: runs the steps; [`checks`]: invariants, expectations, canonical trace,
//!   and the secret oracle over what [`secrets`] knows.
//! - [`report`]: the verdict; [`timeline`]: the execution drawn as an HTML timeline.
//! - [`random`]: random fault schedules, [`placement`]: one as a scenario; [`explore`]:
//!   runs many and writes failures, which [`shrink`] makes minimal.
//! - [`sim`]: sim mode's adapters and runtime ([`run_in`] picks the mode).

pub mod checks;
pub mod engine;
pub mod error;
pub mod explore;
pub mod launcher_node;
pub mod model;
pub mod parse;
pub mod placement;
pub mod pool_keys;
pub mod random;
pub mod report;
pub mod scale;
pub mod secrets;
pub mod shrink;
pub mod sim;
pub mod timeline;
pub mod watchdog;
pub mod world;

use std::path::Path;

pub use error::ScenarioError;
pub use model::{Mode, Scenario};
pub use report::Report;

/// The outcome of running one file `repeat` times with one seed.
#[derive(Debug)]
pub struct Outcome {
    pub mode: Mode,
    /// Why the scenario was not run (it needs a real Docker daemon and none is given).
    pub skipped: Option<String>,
    pub reports: Vec<Report>,
    /// Set when two repeats disagreed on the verdict or the canonical trace.
    pub nondeterminism: Option<String>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.nondeterminism.is_none() && self.reports.iter().all(|r| r.passed)
    }
}

/// Runs a scenario file `repeat` times (at least once) and compares the repeats.
pub async fn run_file(
    path: &Path,
    seed: Option<u64>,
    repeat: usize,
) -> Result<Outcome, ScenarioError> {
    let scenario = parse::load(path)?;
    run(&scenario, seed.unwrap_or(scenario.seed), repeat).await
}

pub async fn run(scenario: &Scenario, seed: u64, repeat: usize) -> Result<Outcome, ScenarioError> {
    let needs_real = scenario
        .topology
        .dockers
        .iter()
        .any(|d| d.kind == model::DockerKind::Real);
    if needs_real && std::env::var_os("TEST_DOCKER_HOST").is_none() {
        return Ok(Outcome {
            mode: Mode::Wire,
            skipped: Some(
                "TEST_DOCKER_HOST not set (this scenario runs on the real dockerd from scripts/dockerd.sh)"
                    .into(),
            ),
            reports: Vec::new(),
            nondeterminism: None,
        });
    }
    let mut reports: Vec<Report> = Vec::new();
    let mut nondeterminism = None;
    for i in 0..repeat.max(1) {
        let report = engine::execute(scenario, seed).await?;
        if let Some(first) = reports.first() {
            if nondeterminism.is_none()
                && (first.passed != report.passed
                    || first.trace.canonical != report.trace.canonical)
            {
                nondeterminism = Some(format!(
                    "repeat {} differs from repeat 1:\n  first: {:?}\n  now:   {:?}",
                    i + 1,
                    first.trace.canonical,
                    report.trace.canonical
                ));
            }
        }
        reports.push(report);
    }
    Ok(Outcome {
        mode: Mode::Wire,
        skipped: None,
        reports,
        nondeterminism,
    })
}

/// One execution of `scenario` in sim mode, on a fresh runtime of its own (one thread,
/// paused time). Blocking: call it outside any runtime. Same scenario and seed, same
/// [`Report::full`], byte for byte.
pub fn execute_sim(scenario: &Scenario, seed: u64) -> Result<Report, ScenarioError> {
    execute_sim_with(scenario, seed, |_| {})
}

/// [`execute_sim`], with `inspect` called on the world before it is torn down.
pub fn execute_sim_with(
    scenario: &Scenario,
    seed: u64,
    inspect: impl FnOnce(&world::World),
) -> Result<Report, ScenarioError> {
    let rt = sim::runtime(seed).map_err(|e| ScenarioError::Harness(format!("sim runtime: {e}")))?;
    let capture = launcher_node::Captured::default();
    let _logs = tracing::dispatcher::set_default(&capture.sim_dispatch());
    rt.block_on(engine::execute_inspect(
        scenario,
        seed,
        Mode::Sim,
        capture,
        inspect,
    ))
}

/// Runs `scenario` `repeat` times (at least once) with `seed` in `mode`, each on a
/// runtime of its own, and compares the repeats (sim: the full trace's hash too).
/// Blocking: call it outside any runtime. A scenario that does not run in `mode` is
/// skipped with its `mode_reason`.
pub fn run_in(
    scenario: &Scenario,
    seed: u64,
    repeat: usize,
    mode: Mode,
) -> Result<Outcome, ScenarioError> {
    if let Err(why) = scenario.runs_in(mode) {
        return Ok(Outcome {
            mode,
            skipped: Some(format!("not in {} mode: {why}", mode.as_str())),
            reports: Vec::new(),
            nondeterminism: None,
        });
    }
    match mode {
        Mode::Wire => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| ScenarioError::Harness(format!("runtime: {e}")))?;
            rt.block_on(run(scenario, seed, repeat))
        }
        Mode::Sim => {
            let mut reports: Vec<Report> = Vec::new();
            let mut nondeterminism = None;
            for i in 0..repeat.max(1) {
                let report = execute_sim(scenario, seed)?;
                if let Some(first) = reports.first() {
                    if nondeterminism.is_none() && first.full_hash() != report.full_hash() {
                        let at = first
                            .full
                            .iter()
                            .zip(&report.full)
                            .position(|(a, b)| a != b)
                            .unwrap_or(first.full.len().min(report.full.len()));
                        nondeterminism = Some(format!(
                            "repeat {} differs from repeat 1 at full-trace line {at}:\n  first: {:?}\n  now:   {:?}",
                            i + 1,
                            first.full.get(at),
                            report.full.get(at)
                        ));
                    }
                }
                reports.push(report);
            }
            Ok(Outcome {
                mode,
                skipped: None,
                reports,
                nondeterminism,
            })
        }
    }
}

/// [`run_in`] for a file (its seed unless `seed` is given).
pub fn run_file_in(
    path: &Path,
    seed: Option<u64>,
    repeat: usize,
    mode: Mode,
) -> Result<Outcome, ScenarioError> {
    let scenario = parse::load(path)?;
    run_in(&scenario, seed.unwrap_or(scenario.seed), repeat, mode)
}

/// The same scenario on the real Docker daemon (`TEST_DOCKER_HOST`), with shell-script
/// workers a busybox container runs; None when the scenario needs what only the fake can do
/// (daemon faults or restarts, images with chosen platforms, OOM kills).
pub fn on_real_docker(scenario: &Scenario) -> Option<Scenario> {
    use model::{BinaryKind, DockerKind, Fault, Step};
    let fake_only = scenario
        .phases
        .iter()
        .flat_map(|p| &p.steps)
        .any(|s| match s {
            Step::RestartDocker { .. } => true,
            Step::Fault(
                Fault::DockerErrors { .. } | Fault::FailPulls { .. } | Fault::SlowPulls { .. },
            ) => true,
            Step::Schedule(s) if s.behaviour.flood.is_some() || s.behaviour.no_trailing_newline => {
                true
            }
            Step::Schedule(s) => s.image.is_some() || s.behaviour.oom_kill,
            _ => false,
        });
    let fake_only = fake_only
        || scenario
            .topology
            .dockers
            .iter()
            .any(|d| !d.images.is_empty() || d.arch != protocol::Arch::Amd64);
    if fake_only {
        return None;
    }
    let mut real = scenario.clone();
    real.modes = Some(vec![model::Mode::Wire]);
    real.mode_reason = Some("a real Docker daemon is reached over its socket".into());
    for d in &mut real.topology.dockers {
        d.kind = DockerKind::Real;
        d.api_version = None;
    }
    for v in &mut real.topology.worker_versions {
        v.kind = BinaryKind::Shell;
    }
    for s in real.phases.iter_mut().flat_map(|p| p.steps.iter_mut()) {
        if let Step::PublishVersion(v) = s {
            v.kind = BinaryKind::Shell;
        }
    }
    Some(real)
}

/// The command that reproduces a run of `path` with `seed`.
pub fn repro_command(path: &Path, seed: u64) -> String {
    format!(
        "cargo run -p scenarios --bin scenario -- run {} --seed {seed}",
        path.display()
    )
}

/// The command that reproduces a run of `path` with `seed` in `mode`.
pub fn repro_command_in(path: &Path, seed: u64, mode: Mode) -> String {
    format!("{} --mode {}", repro_command(path, seed), mode.as_str())
}
