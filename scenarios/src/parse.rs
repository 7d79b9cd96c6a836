//! Reading scenario files: YAML syntax errors carry line and column; references between
//! parts of the file (launcher -> docker, steps -> runs and launchers) are checked here so a
//! scenario never fails half-way for a typo.

use std::collections::BTreeSet;
use std::path::Path;

use crate::error::ScenarioError;
use crate::model::{Fault, Scenario, Step};

pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
        file: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    let scenario: Scenario = serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        ScenarioError::Syntax {
            file: path.to_path_buf(),
            line,
            column,
            message: e.to_string(),
        }
    })?;
    validate(&scenario).map_err(|message| ScenarioError::Invalid {
        file: path.to_path_buf(),
        message,
    })?;
    Ok(scenario)
}

fn validate(s: &Scenario) -> Result<(), String> {
    if let Some(m) = &s.modes {
        if m.is_empty() {
            return Err("modes: name at least one mode (sim, wire), or leave it out".into());
        }
        if m.len() < crate::model::Mode::ALL.len() && s.mode_reason.is_none() {
            return Err("modes: a scenario limited to one mode says why in mode_reason".into());
        }
    }
    let real = s
        .topology
        .dockers
        .iter()
        .any(|d| d.kind == crate::model::DockerKind::Real);
    if real && s.runs_in(crate::model::Mode::Sim).is_ok() {
        return Err(
            "a real docker daemon cannot run in sim mode: add modes: [wire] and mode_reason".into(),
        );
    }
    let t = &s.topology;
    if t.dockers.is_empty() {
        return Err("topology.dockers: at least one docker daemon is needed".into());
    }
    if t.launchers.is_empty() {
        return Err("topology.launchers: at least one launcher is needed".into());
    }
    let dockers = unique(
        "topology.dockers",
        t.dockers.iter().map(|d| d.name.as_str()),
    )?;
    let launchers = unique(
        "topology.launchers",
        t.launchers.iter().map(|l| l.name.as_str()),
    )?;
    for l in &t.launchers {
        if !dockers.contains(l.docker.as_str()) {
            return Err(format!(
                "launcher {:?}: docker {:?} is not in topology.dockers ({})",
                l.name,
                l.docker,
                join(&dockers)
            ));
        }
        if l.capacity == 0 {
            return Err(format!(
                "launcher {:?}: capacity must be at least 1",
                l.name
            ));
        }
    }

    let mut runs = BTreeSet::new();
    for phase in &s.phases {
        for (i, step) in phase.steps.iter().enumerate() {
            let at = format!("phase {:?} step {}", phase.name, i + 1);
            let launcher = |name: &str| {
                if launchers.contains(name) {
                    Ok(())
                } else {
                    Err(format!(
                        "{at}: unknown launcher {name:?} (known: {})",
                        join(&launchers)
                    ))
                }
            };
            let docker = |name: &str| {
                if dockers.contains(name) {
                    Ok(())
                } else {
                    Err(format!(
                        "{at}: unknown docker {name:?} (known: {})",
                        join(&dockers)
                    ))
                }
            };
            let known_run = |runs: &BTreeSet<String>, name: &str| {
                if runs.contains(name) {
                    Ok(())
                } else {
                    Err(format!(
                        "{at}: run {name:?} is not scheduled by an earlier step"
                    ))
                }
            };
            match step {
                Step::Schedule(sch) => {
                    if !runs.insert(sch.run.clone()) {
                        return Err(format!("{at}: run {:?} is scheduled twice", sch.run));
                    }
                }
                Step::WaitRun { run, .. } | Step::AwaitRun { run, .. } => known_run(&runs, run)?,
                Step::WaitEvent {
                    run, launcher: l, ..
                } => {
                    if let Some(r) = run {
                        known_run(&runs, r)?;
                    }
                    if let Some(l) = l {
                        launcher(l)?;
                    }
                }
                Step::Cancel { run } => known_run(&runs, run)?,
                Step::Drain { launcher: l }
                | Step::Undrain { launcher: l }
                | Step::Cycle { launcher: l }
                | Step::Signal { launcher: l, .. }
                | Step::CrashLauncher { launcher: l }
                | Step::StartLauncher { launcher: l }
                | Step::WaitLauncherExit { launcher: l, .. } => launcher(l)?,
                Step::RestartDocker { docker: d, .. } => docker(d)?,
                Step::PublishVersion(_) | Step::RestartBackend | Step::RevokeCredentials => {}
                Step::Fault(f) => match f {
                    Fault::DropConnection { launcher: l }
                    | Fault::DuplicateNextMessage { launcher: l }
                    | Fault::DelayNextMessage { launcher: l, .. } => launcher(l)?,
                    Fault::FullDisk { launcher: l, .. } => {
                        launcher(l)?;
                        if s.runs_in(crate::model::Mode::Wire).is_ok() {
                            return Err(format!(
                                "{at}: full_disk runs in sim mode only (wire would need a \
                                 size-limited filesystem under the launcher's data dir): add \
                                 modes: [sim] and mode_reason"
                            ));
                        }
                    }
                    Fault::DockerErrors { docker: d, .. }
                    | Fault::FailPulls { docker: d, .. }
                    | Fault::SlowPulls { docker: d, .. } => docker(d)?,
                    Fault::BrokerDown { .. }
                    | Fault::BrokerUp
                    | Fault::HttpErrors { .. }
                    | Fault::CorruptDownloads { .. }
                    | Fault::SlowDownloads { .. } => {}
                },
            }
        }
    }
    for (name, exp) in &s.expect.runs {
        if !runs.contains(name) {
            return Err(format!("expect.runs: run {name:?} is never scheduled"));
        }
        if let Some(l) = &exp.launcher {
            if !launchers.contains(l.as_str()) {
                return Err(format!("expect.runs.{name}: unknown launcher {l:?}"));
            }
        }
    }
    for name in s.expect.launchers.keys() {
        if !launchers.contains(name.as_str()) {
            return Err(format!("expect.launchers: unknown launcher {name:?}"));
        }
    }
    Ok(())
}

fn unique<'a>(
    what: &str,
    names: impl Iterator<Item = &'a str>,
) -> Result<BTreeSet<&'a str>, String> {
    let mut seen = BTreeSet::new();
    for n in names {
        if !seen.insert(n) {
            return Err(format!("{what}: name {n:?} is used twice"));
        }
    }
    Ok(seen)
}

fn join(names: &BTreeSet<&str>) -> String {
    names.iter().copied().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "\
description: one run
seed: 3
topology:
  dockers: [{ name: d1 }]
  launchers: [{ name: l1, docker: d1 }]
  worker_versions: [{ version: v1, arch: amd64 }]
phases:
  - name: go
    steps:
      - schedule: { run: r1, behaviour: { stdout: [hi], exit_code: 0 } }
      - wait_run: { run: r1, state: finished, within: 30s }
expect:
  runs:
    r1: { state: finished, logs_contain: [hi] }
";

    fn p(text: &str) -> Result<Scenario, ScenarioError> {
        parse(Path::new("x.yaml"), text)
    }

    #[test]
    fn a_full_disk_is_refused_in_a_file_that_runs_in_wire_mode() {
        let full = MINIMAL.replace(
            "      - schedule:",
            "      - fault: { full_disk: { launcher: l1, count: 2 } }\n      - schedule:",
        );
        let err = p(&full).unwrap_err().to_string();
        assert!(
            err.contains("step 1: full_disk runs in sim mode only"),
            "{err}"
        );
        let sim_only = full.replace(
            "seed: 3",
            "seed: 3\nmodes: [sim]\nmode_reason: the disk is in memory",
        );
        let s = p(&sim_only).unwrap();
        assert!(s.runs_in(crate::model::Mode::Wire).is_err());
    }

    #[test]
    fn minimal_parses() {
        let s = p(MINIMAL).unwrap();
        assert_eq!(s.seed, 3);
        assert_eq!(s.phases[0].steps.len(), 2);
    }

    #[test]
    fn unknown_field_names_line() {
        let bad = MINIMAL.replace("seed: 3", "seed: 3\nsed: 4");
        let err = p(&bad).unwrap_err().to_string();
        assert!(err.starts_with("x.yaml:3:"), "{err}");
        assert!(err.contains("unknown field `sed`"), "{err}");
    }

    #[test]
    fn unknown_step_names_line_and_expected() {
        let bad = MINIMAL.replace("- wait_run:", "- wait_for:");
        let err = p(&bad).unwrap_err().to_string();
        assert!(err.starts_with("x.yaml:11:"), "{err}");
        assert!(err.contains("wait_run"), "lists what was expected: {err}");
    }

    #[test]
    fn bad_duration_is_explained() {
        let bad = MINIMAL.replace("within: 30s", "within: soon");
        let err = p(&bad).unwrap_err().to_string();
        assert!(err.contains("invalid duration \"soon\""), "{err}");
    }

    #[test]
    fn references_are_checked() {
        let err = p(&MINIMAL.replace("docker: d1 }", "docker: d2 }"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("docker \"d2\" is not in topology.dockers (d1)"),
            "{err}"
        );
        let err = p(&MINIMAL.replace("run: r1, state", "run: r2, state"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("run \"r2\" is not scheduled by an earlier step"),
            "{err}"
        );
        let err = p(&MINIMAL.replace("state: finished, within", "state: done, within"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("state \"done\" is not one of"), "{err}");
    }

    /// States, run types and architectures are `protocol`'s names; a wrong one is reported
    /// at its line with the valid names.
    #[test]
    fn protocol_names_are_checked_at_their_line() {
        let err = p(&MINIMAL.replace("arch: amd64", "arch: x86"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("x.yaml:6:"), "{err}");
        assert!(
            err.contains("arch \"x86\" is not one of amd64, arm64"),
            "{err}"
        );
        let err = p(&MINIMAL.replace("run: r1, behaviour", "run: r1, run_type: plan, behaviour"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("x.yaml:10:"), "{err}");
        assert!(
            err.contains(
                "run_type \"plan\" is not one of proposed, tracked, task, destroy, module"
            ),
            "{err}"
        );
        let err = p(&MINIMAL.replace("r1: { state: finished", "r1: { state: done"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("x.yaml:14:"), "{err}");
        assert!(
            err.contains("state \"done\" is not one of scheduled, claimed"),
            "{err}"
        );
    }

    /// Found by fuzz/ (scenario_yaml): an absent optional duration was written as `null`,
    /// which did not parse back ("invalid duration \"null\"").
    #[test]
    fn written_back_as_yaml_parses_again() {
        let s = p(MINIMAL).unwrap();
        let yaml = serde_yaml::to_string(&s).unwrap();
        assert_eq!(p(&yaml).unwrap(), s);
        let explicit = MINIMAL.replace("exit_code: 0 }", "exit_code: 0, duration: null }");
        assert_eq!(p(&explicit).unwrap(), s);
    }
}
