//! A random schedule placed in a scenario: its topology (one fake amd64 daemon with a
//! multi-arch, an arm64-only and a flaky image; launchers masking one secret), a step per
//! op that can run, and the outcome each run's behaviour implies, widened where a fault
//! legitimately changes it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use protocol::api::RunType;
use protocol::{Arch, RunState};

use crate::model::{
    BackendTopology, Behaviour, BinaryKind, DockerKind, DockerTopology, Expectations, Fault, Flood,
    ImageTopology, LauncherTopology, Mode, Phase, RunExpectation, Scenario, ScheduleStep, Step,
    Topology, WorkerVersion,
};
use crate::random::{Image, Op, Output};

/// The masked variable every launcher of a random schedule whitelists.
pub const SECRET_ENV: &str = "DEPLOY_TOKEN";
const DOCKER: &str = "d1";
const MULTI_IMAGE: &str = "example/multi:latest";
const ARM_ONLY_IMAGE: &str = "example/arm-only:latest";
const FLAKY_IMAGE: &str = "example/flaky:latest";

fn secret_value(seed: u64) -> String {
    format!("dtok-{seed:016x}")
}

fn behaviour(run: &str, exit_code: i64, millis: u64, output: Output, secret: &str) -> Behaviour {
    let mut b = Behaviour {
        stdout: vec![format!("output of {run}")],
        exit_code,
        duration: Some(Duration::from_millis(millis)),
        ..Behaviour::default()
    };
    match output {
        Output::Plain => {}
        Output::Secret => b.stdout.push(format!("token={secret} ok")),
        Output::Flood { lines, line_bytes } => b.flood = Some(Flood { lines, line_bytes }),
        Output::Control => b
            .stdout
            .push("\u{1b}[1mbold\u{1b}[0m bell\u{7} tab\there cr\rend".to_string()),
        Output::NoNewline => {
            b.stdout.push(format!("last line of {run}"));
            b.no_trailing_newline = true;
        }
    }
    b
}

/// What the generator tracks while placing ops, so every op it emits can run and every run
/// can end (liveness is checked).
#[derive(Default)]
struct Placement {
    steps: Vec<Step>,
    runs: Vec<String>,
    canceled: BTreeSet<String>,
    drained: BTreeSet<String>,
    /// Launchers not running (crashed, signalled, cycled): restarted at the end.
    down: BTreeSet<String>,
    versions: u32,
}

/// Builds a scenario from operations. At the end, drained launchers are undrained and
/// stopped ones started again so every run can finish.
pub fn scenario(seed: u64, capacities: &[u32], ops: &[Op]) -> Scenario {
    let count = capacities.len().max(1);
    let launcher = |i: usize| format!("l{}", i % count + 1);
    let secret = secret_value(seed);
    let mut p = Placement {
        versions: 1,
        ..Placement::default()
    };
    let mut outcomes: BTreeMap<String, (RunState, Option<i64>, Option<&str>)> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Run {
                exit_code,
                millis,
                image,
                output,
            } => {
                let run = format!("r{}", p.runs.len() + 1);
                let (image, outcome) = match image {
                    Image::Default => (None, None),
                    Image::Multi => (Some(MULTI_IMAGE), None),
                    Image::Flaky => (Some(FLAKY_IMAGE), None),
                    Image::ArmOnly => (
                        Some(ARM_ONLY_IMAGE),
                        Some((RunState::Failed, None, Some("architecture_mismatch"))),
                    ),
                };
                let by_exit = if *exit_code == 0 {
                    RunState::Finished
                } else {
                    RunState::Failed
                };
                outcomes.insert(
                    run.clone(),
                    outcome.unwrap_or((by_exit, Some(*exit_code), None)),
                );
                p.steps.push(Step::Schedule(ScheduleStep {
                    run: run.clone(),
                    image: image.map(str::to_string),
                    run_type: RunType::Tracked,
                    behaviour: behaviour(&run, *exit_code, *millis, *output, &secret),
                    env: BTreeMap::new(),
                    vendor: None,
                }));
                p.runs.push(run);
            }
            Op::Cancel { back } => {
                if let Some(run) = p.runs.iter().rev().nth(*back).cloned() {
                    p.canceled.insert(run.clone());
                    p.steps.push(Step::Cancel { run });
                }
            }
            Op::Await { back, state } => {
                let serving = (0..count)
                    .map(launcher)
                    .any(|l| !p.down.contains(&l) && !p.drained.contains(&l));
                if let Some(run) = p.runs.iter().rev().nth(*back).filter(|_| serving) {
                    p.steps.push(Step::AwaitRun {
                        run: run.clone(),
                        state: *state,
                        within: Duration::from_secs(60),
                    });
                }
            }
            Op::DropConnection { launcher: l } => {
                // Dropping waits for a connection: only a running launcher has one.
                if !p.down.contains(&launcher(*l)) {
                    p.steps.push(Step::Fault(Fault::DropConnection {
                        launcher: launcher(*l),
                    }))
                }
            }
            Op::HttpErrors { count, status } => p.steps.push(Step::Fault(Fault::HttpErrors {
                count: *count,
                status: *status,
                retry_after_secs: Some(1),
                path: None,
            })),
            Op::Duplicate { launcher: l } => {
                p.steps.push(Step::Fault(Fault::DuplicateNextMessage {
                    launcher: launcher(*l),
                }))
            }
            Op::Delay {
                launcher: l,
                millis,
            } => p.steps.push(Step::Fault(Fault::DelayNextMessage {
                launcher: launcher(*l),
                by: Duration::from_millis(*millis),
            })),
            Op::FullDisk {
                launcher: l,
                downloads,
            } => p.steps.push(Step::Fault(Fault::FullDisk {
                launcher: launcher(*l),
                count: *downloads,
            })),
            Op::CorruptDownload => p
                .steps
                .push(Step::Fault(Fault::CorruptDownloads { count: 1 })),
            Op::SlowDownload => p.steps.push(Step::Fault(Fault::SlowDownloads {
                count: 1,
                // The stub is ~100 bytes: a trickle of about half a second.
                chunk_bytes: 16,
                every: Duration::from_millis(80),
            })),
            Op::PublishVersion => {
                p.versions += 1;
                p.steps.push(Step::PublishVersion(WorkerVersion {
                    version: format!("v{}", p.versions),
                    arch: Arch::Amd64,
                    kind: BinaryKind::Elf,
                }));
            }
            Op::Drain { launcher: l } => {
                if p.drained.insert(launcher(*l)) {
                    p.steps.push(Step::Drain {
                        launcher: launcher(*l),
                    });
                }
            }
            Op::Undrain { launcher: l } => {
                if p.drained.remove(&launcher(*l)) {
                    p.steps.push(Step::Undrain {
                        launcher: launcher(*l),
                    });
                }
            }
            Op::Cycle { launcher: l } | Op::Signal { launcher: l } => {
                let name = launcher(*l);
                if matches!(op, Op::Cycle { .. }) {
                    // Cycling drains the worker, and its restart re-registers it drained.
                    p.drained.insert(name.clone());
                }
                if p.down.insert(name.clone()) {
                    p.steps.push(match op {
                        Op::Cycle { .. } => Step::Cycle { launcher: name },
                        _ => Step::Signal {
                            launcher: name,
                            count: 1,
                        },
                    });
                }
            }
            Op::CrashLauncher { launcher: l } => {
                let name = launcher(*l);
                if p.down.insert(name.clone()) {
                    p.steps.push(Step::CrashLauncher { launcher: name });
                }
            }
            Op::StartLauncher { launcher: l } => {
                let name = launcher(*l);
                // A restarted launcher re-registers its worker, drained if it was.
                p.down.remove(&name);
                p.steps.push(Step::StartLauncher { launcher: name });
            }
            Op::RestartDocker { keep_containers } => p.steps.push(Step::RestartDocker {
                docker: DOCKER.into(),
                keep_containers: *keep_containers,
            }),
            Op::BrokerDown { millis } => p.steps.push(Step::Fault(Fault::BrokerDown {
                for_: Some(Duration::from_millis(*millis)),
            })),
            Op::RestartBackend => p.steps.push(Step::RestartBackend),
            Op::DockerErrors { route, count } => p.steps.push(Step::Fault(Fault::DockerErrors {
                docker: DOCKER.into(),
                route: route.key().into(),
                count: *count,
                status: 500,
                message: None,
            })),
            Op::FailPulls { count } => p.steps.push(Step::Fault(Fault::FailPulls {
                docker: DOCKER.into(),
                image: FLAKY_IMAGE.into(),
                count: Some(*count),
            })),
            Op::RevokeCredentials => {
                p.steps.push(Step::RevokeCredentials);
                // Refused, each launcher exits by itself; the end starts them again.
                p.down.extend((0..count).map(launcher));
            }
            Op::SlowPulls { millis } => p.steps.push(Step::Fault(Fault::SlowPulls {
                docker: DOCKER.into(),
                image: Some(FLAKY_IMAGE.into()),
                count: 1,
                every: Duration::from_millis(*millis),
            })),
        }
    }
    // Started first: an undrain then reaches the worker the launcher registered. A cycled or
    // signalled launcher finishes its runs before it exits: wait for that, since starting
    // one still running crashes it (found by explore: a cycle during `preparing`).
    for l in std::mem::take(&mut p.down) {
        p.steps.push(Step::WaitLauncherExit {
            launcher: l.clone(),
            within: Duration::from_secs(60),
        });
        p.steps.push(Step::StartLauncher { launcher: l });
    }
    for l in std::mem::take(&mut p.drained) {
        p.steps.push(Step::Undrain { launcher: l });
    }
    // Three corrupt downloads in a row use up a run's attempts at the worker binary (the
    // launcher's BINARY_ATTEMPTS): it fails, rightly (found by explore, seed 22).
    let corrupt = ops
        .iter()
        .filter(|op| matches!(op, Op::CorruptDownload))
        .count();
    let disturbed = ops.iter().any(Op::disturbs_runs) || corrupt >= 3;
    let full_disk = ops.iter().any(|op| matches!(op, Op::FullDisk { .. }));
    let mut expect = Expectations::default();
    for (run, (state, exit_code, reason)) in outcomes {
        // A canceled run may still finish first: only the invariants apply to it.
        if p.canceled.contains(&run) {
            continue;
        }
        let e = if disturbed && state != RunState::Failed {
            RunExpectation {
                one_of: vec![state, RunState::Failed],
                ..RunExpectation::default()
            }
        } else if disturbed {
            RunExpectation {
                state: Some(state),
                ..RunExpectation::default()
            }
        } else {
            RunExpectation {
                state: Some(state),
                exit_code,
                reason: reason.map(str::to_string),
                ..RunExpectation::default()
            }
        };
        expect.runs.insert(run, e);
    }
    Scenario {
        description: "random fault schedule".into(),
        seed,
        topology: topology(capacities, &secret),
        phases: vec![Phase {
            name: "random".into(),
            steps: p.steps,
        }],
        expect,
        modes: full_disk.then(|| vec![Mode::Sim]),
        mode_reason: full_disk.then(|| {
            "full_disk needs a size-limited filesystem under the launcher's data dir, which \
             wire mode does not mount"
                .to_string()
        }),
    }
}

fn topology(capacities: &[u32], secret: &str) -> Topology {
    let count = capacities.len().max(1);
    let image = |name: &str, platforms: &[&str]| ImageTopology {
        name: name.into(),
        platforms: platforms.iter().map(|p| p.to_string()).collect(),
    };
    let env: BTreeMap<String, String> = [
        ("SPACELIFT_WHITELIST_ENVS", SECRET_ENV),
        ("SPACELIFT_MASK_ENVS", SECRET_ENV),
        (SECRET_ENV, secret),
        // Floods of a few MB then meet the outbox's bound (an oracle checks it holds).
        ("SPACELIFT_LAUNCHER_RUN_OUTPUT_BUFFER_MIB", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Topology {
        backend: BackendTopology {
            lease_ttl: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
        },
        dockers: vec![DockerTopology {
            name: DOCKER.into(),
            arch: Arch::Amd64,
            api_version: None,
            images: vec![
                image(MULTI_IMAGE, &["linux/amd64", "linux/arm64"]),
                image(ARM_ONLY_IMAGE, &["linux/arm64"]),
            ],
            kind: DockerKind::Fake,
        }],
        launchers: (0..count)
            .map(|i| LauncherTopology {
                name: format!("l{}", i + 1),
                docker: DOCKER.into(),
                capacity: capacities.get(i).copied().unwrap_or(1),
                env: env.clone(),
                autostart: true,
            })
            .collect(),
        worker_versions: vec![WorkerVersion {
            version: "v1".into(),
            arch: Arch::Amd64,
            kind: BinaryKind::Elf,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::Image;

    #[test]
    fn stopped_launchers_restart_and_drained_ones_undrain_at_the_end() {
        let ops = [
            Op::Drain { launcher: 0 },
            Op::CrashLauncher { launcher: 1 },
            Op::DropConnection { launcher: 1 },
        ];
        let s = scenario(1, &[1, 2], &ops);
        let steps = &s.phases[0].steps;
        assert_eq!(
            steps[1..],
            [
                Step::CrashLauncher {
                    launcher: "l2".into()
                },
                Step::WaitLauncherExit {
                    launcher: "l2".into(),
                    within: Duration::from_secs(60),
                },
                Step::StartLauncher {
                    launcher: "l2".into()
                },
                Step::Undrain {
                    launcher: "l1".into()
                },
            ],
            "no drop on a crashed launcher"
        );
    }

    #[test]
    fn a_cycled_launcher_is_restarted_then_undrained() {
        // Found by explore: the restart re-registers the cycled worker, still drained; and
        // it is started once it has exited (starting it while it drains would crash it).
        let s = scenario(1, &[1], &[Op::Cycle { launcher: 0 }]);
        let l1 = || "l1".to_string();
        assert_eq!(
            s.phases[0].steps,
            [
                Step::Cycle { launcher: l1() },
                Step::WaitLauncherExit {
                    launcher: l1(),
                    within: Duration::from_secs(60),
                },
                Step::StartLauncher { launcher: l1() },
                Step::Undrain { launcher: l1() },
            ]
        );
    }

    #[test]
    fn a_disturbing_fault_widens_the_expected_outcome() {
        let run = Op::Run {
            exit_code: 0,
            millis: 0,
            image: Image::Default,
            output: Output::Plain,
        };
        let calm = scenario(1, &[1], std::slice::from_ref(&run));
        assert_eq!(calm.expect.runs["r1"].state, Some(RunState::Finished));
        let crashed = scenario(1, &[1], &[run.clone(), Op::CrashLauncher { launcher: 0 }]);
        assert_eq!(
            crashed.expect.runs["r1"].one_of,
            vec![RunState::Finished, RunState::Failed]
        );
        // Found by explore (seed 22): three corrupt downloads use up a run's binary attempts.
        let two = [Op::CorruptDownload, Op::CorruptDownload, run.clone()];
        assert_eq!(
            scenario(1, &[1], &two).expect.runs["r1"].state,
            Some(RunState::Finished)
        );
        let three = [
            Op::CorruptDownload,
            Op::CorruptDownload,
            Op::CorruptDownload,
            run,
        ];
        assert_eq!(
            scenario(1, &[1], &three).expect.runs["r1"].one_of,
            vec![RunState::Finished, RunState::Failed]
        );
    }
}
