//! The scenario file format (YAML). See `scenarios/README.md` for a guide.
//!
//! Every struct denies unknown fields, so a typo is an error with its line, not a silently
//! ignored setting.

use std::collections::BTreeMap;
use std::time::Duration;

use protocol::api::RunType;
use protocol::{Arch, RunState};
use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// One line saying what the scenario proves.
    pub description: String,
    /// Seeds every RNG in the world (IDs, jitter, behaviours). `--seed` overrides it.
    #[serde(default)]
    pub seed: u64,
    pub topology: Topology,
    /// Steps are written as one-key maps (`- schedule: {...}`), not YAML tags.
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    pub phases: Vec<Phase>,
    #[serde(default)]
    pub expect: Expectations,
    /// The modes this scenario can run in (both when absent); a scenario limited to one
    /// says why in `mode_reason` (a real daemon, a subprocess, a real signal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modes: Option<Vec<Mode>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode_reason: Option<String>,
}

/// How a scenario's world is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The launcher's core on in-memory adapters, one thread, paused (virtual) time.
    Sim,
    /// Real sockets and TLS, launchers on their own threads, real time.
    Wire,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Sim, Mode::Wire];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sim => "sim",
            Mode::Wire => "wire",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "sim" => Ok(Mode::Sim),
            "wire" => Ok(Mode::Wire),
            other => Err(format!("unknown mode {other:?} (sim or wire)")),
        }
    }
}

impl Scenario {
    /// Whether this scenario runs in `mode`; when not, why (its `mode_reason`).
    pub fn runs_in(&self, mode: Mode) -> Result<(), String> {
        match &self.modes {
            Some(m) if !m.contains(&mode) => Err(self
                .mode_reason
                .clone()
                .unwrap_or_else(|| format!("the scenario does not run in {} mode", mode.as_str()))),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default)]
    pub backend: BackendTopology,
    /// Docker daemons; at least one.
    pub dockers: Vec<DockerTopology>,
    /// Launchers; at least one.
    pub launchers: Vec<LauncherTopology>,
    /// Worker binaries published before anything starts.
    #[serde(default)]
    pub worker_versions: Vec<WorkerVersion>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendTopology {
    #[serde(default = "default_lease_ttl", with = "duration")]
    pub lease_ttl: Duration,
    #[serde(default = "default_heartbeat", with = "duration")]
    pub heartbeat_interval: Duration,
}

impl Default for BackendTopology {
    fn default() -> Self {
        BackendTopology {
            lease_ttl: default_lease_ttl(),
            heartbeat_interval: default_heartbeat(),
        }
    }
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(15)
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DockerTopology {
    pub name: String,
    #[serde(default = "default_arch", deserialize_with = "wire_name::arch")]
    pub arch: Arch,
    /// Maximum API version the daemon speaks (Debian's dockerd 20.10: `1.41`).
    #[serde(default)]
    pub api_version: Option<String>,
    /// Images with explicit platforms; any other name pulls for the host platform.
    #[serde(default)]
    pub images: Vec<ImageTopology>,
    /// `fake` (default) or `real`: the real dockerd from `TEST_DOCKER_HOST`.
    #[serde(default)]
    pub kind: DockerKind,
}

fn default_arch() -> Arch {
    Arch::Amd64
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DockerKind {
    #[default]
    Fake,
    Real,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageTopology {
    pub name: String,
    /// `linux/amd64`, `linux/arm64`, ...; empty means the image does not exist.
    pub platforms: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LauncherTopology {
    pub name: String,
    pub docker: String,
    #[serde(default = "one")]
    pub capacity: u32,
    /// Extra launcher environment (e.g. `SPACELIFT_LAUNCHER_LOGS_TIMEOUT: 2s`). The value
    /// `${OTHER_POOL_KEY}` stands for a valid private key of another pool.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Start it with the topology (default) or later with a `start_launcher` step.
    #[serde(default = "yes")]
    pub autostart: bool,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerVersion {
    pub version: String,
    #[serde(deserialize_with = "wire_name::arch")]
    pub arch: Arch,
    /// `elf` (a stub with the right ELF header; default) or `shell` (a busybox script).
    #[serde(default)]
    pub kind: BinaryKind,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BinaryKind {
    #[default]
    Elf,
    Shell,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub name: String,
    pub steps: Vec<Step>,
}

/// What a run's container does (fake-docker behaviour, or the shell worker's settings).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Behaviour {
    #[serde(default)]
    pub stdout: Vec<String>,
    #[serde(default)]
    pub stderr: Vec<String>,
    #[serde(default)]
    pub exit_code: i64,
    #[serde(default, with = "opt_duration")]
    pub duration: Option<Duration>,
    /// Runs until stopped or killed.
    #[serde(default)]
    pub hang: bool,
    #[serde(default)]
    pub oom_kill: bool,
    /// Extra output after `stdout`: many lines, possibly very long (an output flood).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flood: Option<Flood>,
    /// The last line of output ends without a newline.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_trailing_newline: bool,
}

/// `lines` lines of `line_bytes` bytes each (fake-docker writes them; see its `Flood`).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Flood {
    pub lines: u32,
    pub line_bytes: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    Schedule(ScheduleStep),
    /// Wait until a run reaches a state.
    WaitRun {
        run: String,
        #[serde(deserialize_with = "wire_name::run_state")]
        state: RunState,
        #[serde(default = "default_wait", with = "duration")]
        within: Duration,
    },
    /// Wait until a run reaches a state or ends, whichever comes first: a timing point
    /// (random schedules cancel and fault at it), a failure only past `within`.
    AwaitRun {
        run: String,
        #[serde(deserialize_with = "wire_name::run_state")]
        state: RunState,
        #[serde(default = "default_wait", with = "duration")]
        within: Duration,
    },
    /// Wait until the backend records an event of this kind (optionally for a run/launcher).
    WaitEvent {
        event: String,
        #[serde(default)]
        run: Option<String>,
        #[serde(default)]
        launcher: Option<String>,
        #[serde(default = "default_count")]
        count: usize,
        #[serde(default = "default_wait", with = "duration")]
        within: Duration,
    },
    Cancel {
        run: String,
    },
    PublishVersion(WorkerVersion),
    Drain {
        launcher: String,
    },
    Undrain {
        launcher: String,
    },
    Cycle {
        launcher: String,
    },
    /// SIGTERM-equivalent to an in-process launcher (`count` of them in a row).
    Signal {
        launcher: String,
        #[serde(default = "one_usize")]
        count: usize,
    },
    /// Kill a launcher without any goodbye (its Last Will fires).
    CrashLauncher {
        launcher: String,
    },
    StartLauncher {
        launcher: String,
    },
    /// Wait for a launcher process to exit, with the exit expectation.
    WaitLauncherExit {
        launcher: String,
        #[serde(default = "default_wait", with = "duration")]
        within: Duration,
    },
    RestartDocker {
        docker: String,
        #[serde(default = "yes")]
        keep_containers: bool,
    },
    RestartBackend,
    /// Reset the pool's certificate (`pool reset`): the launchers' key is refused from now
    /// on; launchers started later get the new credentials.
    RevokeCredentials,
    Fault(Fault),
}

fn default_wait() -> Duration {
    Duration::from_secs(60)
}

fn default_count() -> usize {
    1
}

fn one_usize() -> usize {
    1
}

fn one_u32() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleStep {
    /// The scenario's name for the run; the engine maps it to the run's ULID.
    pub run: String,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default = "default_run_type", deserialize_with = "wire_name::run_type")]
    pub run_type: RunType,
    #[serde(default)]
    pub behaviour: Behaviour,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The stack's vendor in the run spec (`ansible`); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
}

fn default_run_type() -> RunType {
    RunType::Tracked
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Drop one launcher's MQTT connection.
    DropConnection {
        launcher: String,
    },
    /// Stop the broker until `broker_up`, or for `for` if given.
    BrokerDown {
        #[serde(default, rename = "for", with = "opt_duration")]
        for_: Option<Duration>,
    },
    BrokerUp,
    /// Deliver the next `run.scheduled` to this launcher twice.
    DuplicateNextMessage {
        launcher: String,
    },
    /// Hold the next message to this launcher for this long.
    DelayNextMessage {
        launcher: String,
        #[serde(with = "duration")]
        by: Duration,
    },
    /// Answer the next `count` HTTPS calls with `status` (optionally only under `path`).
    HttpErrors {
        count: u32,
        status: u16,
        #[serde(default)]
        retry_after_secs: Option<u64>,
        #[serde(default)]
        path: Option<String>,
    },
    /// Flip bytes in the next `count` downloads.
    CorruptDownloads {
        count: u32,
    },
    /// Serve the next `count` downloads slowly (`chunk_bytes` every `every`).
    SlowDownloads {
        count: u32,
        chunk_bytes: usize,
        #[serde(with = "duration")]
        every: Duration,
    },
    /// Fail the next `count` calls of a Docker route (`POST /images/create`, ...).
    DockerErrors {
        docker: String,
        route: String,
        count: u32,
        status: u16,
        #[serde(default)]
        message: Option<String>,
    },
    /// Make the next `count` pulls (of `image`, or of any image) trickle: `every` between
    /// progress lines.
    SlowPulls {
        docker: String,
        #[serde(default)]
        image: Option<String>,
        count: u32,
        #[serde(with = "duration")]
        every: Duration,
    },
    /// The next `count` worker-binary downloads on this launcher's host fail at their
    /// first write: the disk under the binary cache is full (`count: 0` makes room
    /// again). Sim mode only (wire would
    /// need a size-limited filesystem mounted under the launcher's data dir).
    FullDisk {
        launcher: String,
        #[serde(default = "one_u32")]
        count: u32,
    },
    /// Make pulls of an image fail in-stream after some progress.
    FailPulls {
        docker: String,
        image: String,
        #[serde(default)]
        count: Option<u32>,
    },
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expectations {
    #[serde(default)]
    pub runs: BTreeMap<String, RunExpectation>,
    #[serde(default)]
    pub launchers: BTreeMap<String, LauncherExpectation>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunExpectation {
    #[serde(default, deserialize_with = "wire_name::opt_run_state")]
    pub state: Option<RunState>,
    /// The run ends in one of these states (a fault may legitimately change the outcome).
    #[serde(
        default,
        deserialize_with = "wire_name::run_states",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub one_of: Vec<RunState>,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub worker_version: Option<String>,
    #[serde(default)]
    pub launcher: Option<String>,
    #[serde(default)]
    pub logs_contain: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LauncherExpectation {
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub error_contains: Option<String>,
}

/// Run states, run types and architectures by the names `protocol` gives them (its serde
/// names, the only definition); a wrong name is an error at its line listing the valid ones.
mod wire_name {
    use serde::de::DeserializeOwned;
    use serde::de::{self, value, IntoDeserializer};

    use super::*;

    fn parse<T, E>(what: &str, text: &str, all: &[T]) -> Result<T, E>
    where
        T: DeserializeOwned + Serialize,
        E: de::Error,
    {
        T::deserialize(IntoDeserializer::<value::Error>::into_deserializer(text)).map_err(|_| {
            let names: Vec<String> = all
                .iter()
                .filter_map(|v| serde_json::to_value(v).ok()?.as_str().map(String::from))
                .collect();
            E::custom(format!(
                "{what} {text:?} is not one of {}",
                names.join(", ")
            ))
        })
    }

    pub fn run_state<'de, D: Deserializer<'de>>(d: D) -> Result<RunState, D::Error> {
        parse("state", &String::deserialize(d)?, &RunState::ALL)
    }

    pub fn opt_run_state<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RunState>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| parse("state", &text, &RunState::ALL))
            .transpose()
    }

    pub fn run_states<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RunState>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| parse("state", text, &RunState::ALL))
            .collect()
    }

    pub fn run_type<'de, D: Deserializer<'de>>(d: D) -> Result<RunType, D::Error> {
        parse("run_type", &String::deserialize(d)?, &RunType::ALL)
    }

    pub fn arch<'de, D: Deserializer<'de>>(d: D) -> Result<Arch, D::Error> {
        parse("arch", &String::deserialize(d)?, &Arch::ALL)
    }
}

/// Go durations (`protocol::duration`): `500ms`, `2s`, `7m`, `1h30m`.
pub mod duration {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&protocol::duration::format_go_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse(&String::deserialize(d)?)
    }

    pub(super) fn parse<E: serde::de::Error>(text: &str) -> Result<Duration, E> {
        protocol::duration::parse_go_duration(text).map_err(|e| {
            E::custom(format!(
                "invalid duration {text:?} ({e}); expected e.g. 500ms, 2s, 7m"
            ))
        })
    }
}

pub mod opt_duration {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    /// `null` (as written back for `None`, or `duration:` left empty) is no duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::duration::parse(&text))
            .transpose()
    }
}
