//! Random fault schedules for property tests: a small topology, a sequence of runs and
//! faults, and no expectations beyond the invariants every scenario keeps.

use std::collections::BTreeMap;
use std::time::Duration;

use protocol::api::RunType;
use protocol::{Arch, RunState};

use crate::model::{
    BackendTopology, Behaviour, BinaryKind, DockerKind, DockerTopology, Expectations, Fault,
    LauncherTopology, Phase, RunExpectation, Scenario, ScheduleStep, Step, Topology, WorkerVersion,
};

/// One thing that happens, before it is placed in a scenario.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Run {
        exit_code: i64,
        millis: u64,
    },
    /// Cancel the most recently scheduled run, if any.
    CancelLast,
    DropConnection {
        launcher: usize,
    },
    HttpErrors {
        count: u32,
        status: u16,
    },
    Duplicate {
        launcher: usize,
    },
    Delay {
        launcher: usize,
        millis: u64,
    },
    CorruptDownload,
    Drain {
        launcher: usize,
    },
    PublishVersion,
}

pub const LAUNCHERS: usize = 2;

/// Builds a scenario from operations. Drained launchers are undrained at the end so every
/// run can finish (liveness is checked, so the schedule must allow it).
pub fn scenario(seed: u64, capacities: &[u32], ops: &[Op]) -> Scenario {
    let launcher = |i: usize| format!("l{}", i % LAUNCHERS + 1);
    let mut steps = Vec::new();
    let mut runs = 0usize;
    let mut drained = std::collections::BTreeSet::new();
    let mut versions = 1;
    let mut expect = Expectations::default();
    let mut canceled = std::collections::BTreeSet::new();
    for op in ops {
        match op {
            Op::Run { exit_code, millis } => {
                runs += 1;
                // Every fault in a random schedule is one the launcher must ride out, so
                // each run's outcome is fixed by its exit code (unless it is canceled).
                expect.runs.insert(
                    format!("r{runs}"),
                    RunExpectation {
                        state: Some(if *exit_code == 0 {
                            RunState::Finished
                        } else {
                            RunState::Failed
                        }),
                        exit_code: Some(*exit_code),
                        ..RunExpectation::default()
                    },
                );
                steps.push(Step::Schedule(ScheduleStep {
                    run: format!("r{runs}"),
                    image: None,
                    run_type: RunType::Tracked,
                    behaviour: Behaviour {
                        stdout: vec![format!("output of r{runs}")],
                        exit_code: *exit_code,
                        duration: Some(Duration::from_millis(*millis)),
                        ..Behaviour::default()
                    },
                    env: BTreeMap::new(),
                    vendor: None,
                }));
            }
            Op::CancelLast if runs > 0 => {
                canceled.insert(format!("r{runs}"));
                steps.push(Step::Cancel {
                    run: format!("r{runs}"),
                })
            }
            Op::CancelLast => {}
            Op::DropConnection { launcher: l } => steps.push(Step::Fault(Fault::DropConnection {
                launcher: launcher(*l),
            })),
            Op::HttpErrors { count, status } => steps.push(Step::Fault(Fault::HttpErrors {
                count: *count,
                status: *status,
                retry_after_secs: Some(1),
                path: None,
            })),
            Op::Duplicate { launcher: l } => steps.push(Step::Fault(Fault::DuplicateNextMessage {
                launcher: launcher(*l),
            })),
            Op::Delay {
                launcher: l,
                millis,
            } => steps.push(Step::Fault(Fault::DelayNextMessage {
                launcher: launcher(*l),
                by: Duration::from_millis(*millis),
            })),
            Op::CorruptDownload => steps.push(Step::Fault(Fault::CorruptDownloads { count: 1 })),
            Op::Drain { launcher: l } => {
                if drained.insert(launcher(*l)) {
                    steps.push(Step::Drain {
                        launcher: launcher(*l),
                    });
                }
            }
            Op::PublishVersion => {
                versions += 1;
                steps.push(Step::PublishVersion(WorkerVersion {
                    version: format!("v{versions}"),
                    arch: Arch::Amd64,
                    kind: BinaryKind::Elf,
                }));
            }
        }
    }
    for l in drained {
        steps.push(Step::Undrain { launcher: l });
    }
    // A canceled run may still finish first: only the invariants apply to it.
    for r in canceled {
        expect.runs.remove(&r);
    }
    Scenario {
        description: "random fault schedule".into(),
        seed,
        topology: Topology {
            backend: BackendTopology {
                lease_ttl: Duration::from_secs(10),
                heartbeat_interval: Duration::from_secs(1),
            },
            dockers: vec![DockerTopology {
                name: "d1".into(),
                arch: Arch::Amd64,
                api_version: None,
                images: Vec::new(),
                kind: DockerKind::Fake,
            }],
            launchers: (0..LAUNCHERS)
                .map(|i| LauncherTopology {
                    name: launcher(i),
                    docker: "d1".into(),
                    capacity: capacities.get(i).copied().unwrap_or(1),
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
        phases: vec![Phase {
            name: "random".into(),
            steps,
        }],
        expect,
        modes: None,
        mode_reason: None,
    }
}
