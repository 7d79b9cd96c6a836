//! Scenario engine: drives the launcher against the fake backend and fake Docker daemon from
//! declarative YAML files (`scenarios/cases/*.yaml`).
//!
//! - [`model`]: the file format; [`parse`]: reading and checking files.
//! - [`world`]: the simulated world (backend, daemons, launchers) of one execution.
//! - [`launcher_node`]: an in-process launcher that can be signalled and crashed.
//! - [`engine`]: runs the steps; [`checks`]: invariants, expectations, canonical trace.
//! - [`report`]: the verdict.

pub mod checks;
pub mod engine;
pub mod error;
pub mod launcher_node;
pub mod model;
pub mod parse;
pub mod random;
pub mod report;
pub mod world;

use std::path::Path;

pub use error::ScenarioError;
pub use model::Scenario;
pub use report::Report;

/// The outcome of running one file `repeat` times with one seed.
#[derive(Debug)]
pub struct Outcome {
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
        reports,
        nondeterminism,
    })
}

/// The command that reproduces a run of `path` with `seed`.
pub fn repro_command(path: &Path, seed: u64) -> String {
    format!(
        "cargo run -p scenarios --bin scenario -- run {} --seed {seed}",
        path.display()
    )
}
