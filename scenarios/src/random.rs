//! Random fault schedules: one to three launchers of mixed capacity and a sequence of
//! [`Op`]s (runs and every fault the fixed cases use), each schedule from one seed;
//! [`crate::placement`] turns one into a scenario.

use protocol::RunState;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::model::Scenario;
pub use crate::placement::{scenario, SECRET_ENV};

/// What a run prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    Plain,
    /// The launchers' masked value (`DEPLOY_TOKEN`), which must reach nothing unmasked.
    Secret,
    /// Many lines, or very long ones.
    Flood {
        lines: u32,
        line_bytes: usize,
    },
    /// Escape sequences, a bell, a carriage return and a tab.
    Control,
    /// The last line has no newline.
    NoNewline,
}

/// Which image a run asks for (the daemon is amd64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Image {
    /// The launcher's default runner image.
    Default,
    /// amd64 and arm64: runs.
    Multi,
    /// arm64 only: an architecture mismatch.
    ArmOnly,
    /// The image [`Op::FailPulls`] and [`Op::SlowPulls`] aim at.
    Flaky,
}

/// One thing that happens, before it is placed in a scenario. Launcher indexes wrap around
/// the topology's launchers; a run index counts back from the latest run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Run {
        exit_code: i64,
        millis: u64,
        image: Image,
        output: Output,
    },
    /// Cancel the `back`-th most recent run (0 = the latest), if there is one.
    Cancel {
        back: usize,
    },
    /// Wait until the `back`-th most recent run reaches `state` or ends (a timing point for
    /// the ops that follow), while some launcher can take it.
    Await {
        back: usize,
        state: RunState,
    },
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
    SlowDownload,
    /// Publish a new worker version (during a slow download, if one is armed).
    PublishVersion,
    Drain {
        launcher: usize,
    },
    Undrain {
        launcher: usize,
    },
    Cycle {
        launcher: usize,
    },
    /// SIGTERM: the launcher drains and exits.
    Signal {
        launcher: usize,
    },
    CrashLauncher {
        launcher: usize,
    },
    /// Start a launcher (crashing it first if it is running).
    StartLauncher {
        launcher: usize,
    },
    RestartDocker {
        keep_containers: bool,
    },
    BrokerDown {
        millis: u64,
    },
    RestartBackend,
    DockerErrors {
        route: DockerRoute,
        count: u32,
    },
    FailPulls {
        count: u32,
    },
    SlowPulls {
        millis: u64,
    },
    /// Reset the pool's certificate: every running launcher is refused and exits.
    RevokeCredentials,
    /// The disk under a launcher's binary cache is full for its next `downloads`
    /// (3 in a row fail a run).
    FullDisk {
        launcher: usize,
        downloads: u32,
    },
}

/// Docker routes a schedule fails (fake-docker's route keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DockerRoute {
    ImagesCreate,
    ContainersCreate,
    ContainersStart,
    ContainersList,
}

impl DockerRoute {
    pub fn key(self) -> &'static str {
        match self {
            DockerRoute::ImagesCreate => "images.create",
            DockerRoute::ContainersCreate => "containers.create",
            DockerRoute::ContainersStart => "containers.start",
            DockerRoute::ContainersList => "containers.list",
        }
    }
}

impl Op {
    /// Ops after which any run may legitimately fail (the launcher, its daemon or its
    /// backend went away, or Docker refused something a retry need not survive).
    pub fn disturbs_runs(&self) -> bool {
        matches!(
            self,
            Op::Signal { .. }
                | Op::CrashLauncher { .. }
                | Op::StartLauncher { .. }
                | Op::RestartDocker { .. }
                | Op::BrokerDown { .. }
                | Op::RestartBackend
                | Op::DockerErrors { .. }
                | Op::FailPulls { .. }
                | Op::RevokeCredentials
                | Op::FullDisk { .. }
        )
    }
}

/// A whole random schedule: the launchers' capacities (one launcher each) and the ops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub seed: u64,
    pub capacities: Vec<u32>,
    pub ops: Vec<Op>,
}

impl Schedule {
    /// The schedule `seed` stands for: the same seed always gives the same schedule.
    pub fn generate(seed: u64, max_ops: usize) -> Schedule {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let launchers = rng.random_range(1..=3usize);
        let capacities = (0..launchers).map(|_| rng.random_range(1..=3u32)).collect();
        let n = rng.random_range(1..=max_ops.max(1));
        let ops = (0..n).map(|_| random_op(&mut rng, launchers)).collect();
        Schedule {
            seed,
            capacities,
            ops,
        }
    }

    pub fn scenario(&self) -> Scenario {
        scenario(self.seed, &self.capacities, &self.ops)
    }
}

fn random_op(rng: &mut ChaCha8Rng, launchers: usize) -> Op {
    let l = rng.random_range(0..launchers);
    // Weights: runs dominate, so faults have something to act on.
    match rng.random_range(0..100u32) {
        0..=29 => Op::Run {
            exit_code: [0, 0, 0, 1, 3][rng.random_range(0..5)],
            millis: rng.random_range(0..1500),
            image: match rng.random_range(0..10) {
                0 => Image::ArmOnly,
                1 => Image::Multi,
                2 | 3 => Image::Flaky,
                _ => Image::Default,
            },
            output: match rng.random_range(0..10) {
                0 => Output::Secret,
                1 => Output::Control,
                2 => Output::NoNewline,
                3 => {
                    // Volume, long lines, very long lines: a few MB at most (2,000 lines of
                    // 20 kB, 40 MB, did not finish within the 90s settle bound in wire mode).
                    let (lines, line_bytes) =
                        [(5000, 100), (50, 40_000), (2, 1_000_000)][rng.random_range(0..3)];
                    Output::Flood { lines, line_bytes }
                }
                _ => Output::Plain,
            },
        },
        30..=35 => Op::Cancel {
            back: rng.random_range(0..3),
        },
        36..=37 => Op::Await {
            back: rng.random_range(0..2),
            state: [RunState::Claimed, RunState::Preparing, RunState::Running]
                [rng.random_range(0..3)],
        },
        38..=40 => Op::DropConnection { launcher: l },
        41..=43 => Op::HttpErrors {
            count: rng.random_range(1..4),
            status: [500, 503, 429][rng.random_range(0..3)],
        },
        44..=46 => Op::Duplicate { launcher: l },
        47..=49 => Op::Delay {
            launcher: l,
            millis: rng.random_range(100..1500),
        },
        50..=52 => Op::CorruptDownload,
        53..=55 => Op::SlowDownload,
        56..=59 => Op::PublishVersion,
        60..=62 => Op::Drain { launcher: l },
        63..=64 => Op::Undrain { launcher: l },
        65..=66 => Op::Cycle { launcher: l },
        67..=68 => Op::Signal { launcher: l },
        69..=72 => Op::CrashLauncher { launcher: l },
        73..=75 => Op::StartLauncher { launcher: l },
        76..=78 => Op::RestartDocker {
            keep_containers: rng.random_bool(0.5),
        },
        79..=81 => Op::BrokerDown {
            millis: rng.random_range(200..3000),
        },
        82..=84 => Op::RestartBackend,
        85..=89 => Op::DockerErrors {
            route: [
                DockerRoute::ImagesCreate,
                DockerRoute::ContainersCreate,
                DockerRoute::ContainersStart,
                DockerRoute::ContainersList,
            ][rng.random_range(0..4)],
            count: rng.random_range(1..3),
        },
        90..=91 => Op::RevokeCredentials,
        92..=94 => Op::FailPulls {
            count: rng.random_range(1..3),
        },
        95..=97 => Op::SlowPulls {
            millis: rng.random_range(50..500),
        },
        _ => Op::FullDisk {
            launcher: l,
            downloads: rng.random_range(1..5),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        for seed in 0..50 {
            assert_eq!(Schedule::generate(seed, 12), Schedule::generate(seed, 12));
        }
        assert_ne!(Schedule::generate(1, 12), Schedule::generate(2, 12));
    }

    #[test]
    fn every_generated_scenario_is_valid() {
        for seed in 0..200 {
            let s = Schedule::generate(seed, 12).scenario();
            let yaml = serde_yaml::to_string(&s).expect("serializes");
            let back = crate::parse::parse(std::path::Path::new("random.yaml"), &yaml)
                .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
            assert_eq!(back, s);
        }
    }
}
