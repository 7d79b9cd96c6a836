//! The launcher's validated configuration (ripgrep's "HiArgs"): everything downstream
//! reads this, never the environment. `config` builds it from an [`crate::config::EnvSource`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::init_policy::InitPolicy;
use crate::secret::{SecretString, SecretUrl};

/// A bind mount from the Docker daemon's filesystem into run containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraMount {
    pub host: String,
    pub container: String,
    /// Which runs get it: all, read-only (proposed) only, or write (tracked, tasks) only.
    pub applies_to: MountScope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountScope {
    All,
    ReadOnlyRuns,
    WriteRuns,
}

/// A launcher environment variable passed through to runs (`SPACELIFT_WHITELIST_ENVS`).
/// Its value may be a secret: `Debug` shows the name only.
#[derive(Debug, Clone)]
pub struct PassedEnv {
    pub name: String,
    pub value: SecretString,
    pub applies_to: MountScope,
}

/// A `SPACELIFT_PRIVATEVCS_MAPPING_{NAME,BASE_ENDPOINT}_<n>` pair: a VCS-agent pool name
/// and the URL the worker reaches it at directly. Passed to every run's worker, numbered
/// from 0 in the order of the launcher's `<n>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateVcsMapping {
    pub name: String,
    /// May carry credentials (`https://user:token@host`); shown redacted.
    pub base_endpoint: SecretUrl,
}

/// Who the run container's processes are: `uid:gid`, numeric, so it works in any image (a
/// name needs the image's `/etc/passwd`) and the run's workspace can be given to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunUser {
    pub uid: u32,
    pub gid: u32,
}

impl RunUser {
    /// Spacelift's: "runs its Docker workflows as user spacelift with UID 1983".
    pub const SPACELIFT: RunUser = RunUser {
        uid: 1983,
        gid: 1983,
    };

    /// `uid[:gid]`, both numbers; without a gid, the group is the uid (as Spacelift's
    /// images have it: user and group `spacelift`, 1983).
    pub fn parse(s: &str) -> Result<RunUser, String> {
        let num = |p: &str| {
            p.trim()
                .parse::<u32>()
                .map_err(|_| format!("expected uid[:gid] as numbers, e.g. 1983:1983, got {s:?}"))
        };
        match s.split_once(':') {
            Some((u, g)) => Ok(RunUser {
                uid: num(u)?,
                gid: num(g)?,
            }),
            None => {
                let uid = num(s)?;
                Ok(RunUser { uid, gid: uid })
            }
        }
    }

    /// This process's own user and group when it is not root, else `None`. Only root can
    /// give run workspaces to another user, so a launcher started without root (the
    /// sandbox on a laptop, tests, benchmarks) must run its runs as itself: set
    /// `SPACELIFT_LAUNCHER_RUN_USER` to this.
    pub fn unprivileged_self() -> Option<RunUser> {
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to the process's effective uid and gid.
        let m = std::fs::metadata("/proc/self").ok()?;
        (m.uid() != 0).then(|| RunUser {
            uid: m.uid(),
            gid: m.gid(),
        })
    }
}

impl std::fmt::Display for RunUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// Everything the run supervisor needs to know, independent of where it came from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Runs taken at once (`--capacity`, `SPACELIFT_LAUNCHER_CAPACITY`; default 1).
    pub capacity: u32,
    /// `SPACELIFT_DEFAULT_RUNNER_IMAGE`.
    pub default_runner_image: String,
    /// `SPACELIFT_DEFAULT_ANSIBLE_RUNNER_IMAGE`: instead, for Ansible stacks (the run
    /// spec's `vendor`).
    pub default_ansible_runner_image: String,
    /// `SPACELIFT_WORKER_NETWORK` (default `bridge`).
    pub network: String,
    /// `SPACELIFT_WORKER_RUNTIME` (None: the daemon's default).
    pub runtime: Option<String>,
    /// `SPACELIFT_LAUNCHER_RUN_USER` (default `1983:1983`): the worker's user.
    pub run_user: RunUser,
    /// `SPACELIFT_WORKER_{,RO_,WO_}EXTRA_MOUNTS`.
    pub extra_mounts: Vec<ExtraMount>,
    /// `SPACELIFT_WHITELIST_ENVS`, resolved against the launcher's environment.
    pub passed_env: Vec<PassedEnv>,
    /// Values of `SPACELIFT_MASK_ENVS` variables, replaced by `*****` in run logs.
    pub masked_values: Vec<SecretString>,
    /// `SPACELIFT_LAUNCHER_LOGS_TIMEOUT` (default 7m): a run silent this long is killed.
    pub logs_timeout: Duration,
    /// `SPACELIFT_LAUNCHER_RUN_TIMEOUT` (default 70m).
    pub run_timeout: Duration,
    /// `SPACELIFT_LAUNCHER_PREPARE_TIMEOUT` (default 15m): the longest a run may spend
    /// preparing (worker binary, initialization policy, image pull) before its container.
    pub prepare_timeout: Duration,
    /// Run output held for the backend per run, in bytes, before the run's output is no
    /// longer read (`SPACELIFT_LAUNCHER_RUN_OUTPUT_BUFFER_MIB`, default 64 MiB).
    pub output_buffer_bytes: usize,
    /// Grace between stop (SIGTERM) and kill when canceling (`SPACELIFT_LAUNCHER_STOP_GRACE`, 10s).
    pub stop_grace: Duration,
    /// `SPACELIFT_RUN_LOGS_ON_STANDARD_OUTPUT_ENABLED`.
    pub run_logs_on_stdout: bool,
    /// `SPACELIFT_DEBUG`: the launcher's debug events; also passed to the worker.
    pub debug: bool,
    /// `SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED`: a worker feature, passed to the worker.
    pub sensitive_output_upload: bool,
    /// `SPACELIFT_DOCKER_CONFIG_DIR`: where `config.json` with registry credentials lives.
    pub docker_config_dir: Option<PathBuf>,
    /// `SPACELIFT_METADATA_<key>=<value>`.
    pub metadata: BTreeMap<String, String>,
    /// Worker-binary cache and launcher state (`SPACELIFT_LAUNCHER_DATA_DIR`,
    /// default `/opt/spacelift`). Binds come from here, so the Docker daemon must see the
    /// same path (as Spacelift's DinD chart arranges).
    pub data_dir: PathBuf,
    /// Worker-binary versions kept in the cache (`SPACELIFT_LAUNCHER_BINARY_CACHE_KEEP`, 3).
    pub binary_cache_keep: usize,
    /// Seed of the launcher's RNG (jitter, IDs). Random per process unless set
    /// (`SPACELIFT_LAUNCHER_SEED`), so simulations replay.
    pub seed: u64,
    /// Optional `host:port` for `/metrics` and `/healthz` (`SPACELIFT_LAUNCHER_METRICS_ADDR`).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY`, compiled: evaluated before each run
    /// starts (after the worker binary is ready, before the image is pulled).
    pub init_policy: Option<Arc<InitPolicy>>,
    /// `SPACELIFT_PRIVATEVCS_MAPPING_{NAME,BASE_ENDPOINT}_<n>`, ordered by `<n>`.
    pub private_vcs_mappings: Vec<PrivateVcsMapping>,
}

impl Settings {
    /// The documented defaults (timeouts, sizes, images), except that run containers get
    /// no network (`none`) and the RNG seed is 0; no mounts, passed env, policy or
    /// metadata. What tests and simulations start from.
    pub fn isolated(data_dir: PathBuf) -> Settings {
        Settings {
            capacity: 1,
            default_runner_image: crate::DEFAULT_RUNNER_IMAGE.to_string(),
            default_ansible_runner_image: crate::config::DEFAULT_ANSIBLE_RUNNER_IMAGE.to_string(),
            network: "none".into(),
            runtime: None,
            run_user: RunUser::SPACELIFT,
            extra_mounts: Vec::new(),
            passed_env: Vec::new(),
            masked_values: Vec::new(),
            logs_timeout: Duration::from_secs(7 * 60),
            run_timeout: Duration::from_secs(70 * 60),
            prepare_timeout: Duration::from_secs(15 * 60),
            output_buffer_bytes: crate::outbox::DEFAULT_MAX_QUEUED_BYTES,
            stop_grace: Duration::from_secs(10),
            run_logs_on_stdout: false,
            debug: false,
            sensitive_output_upload: false,
            docker_config_dir: None,
            metadata: BTreeMap::new(),
            data_dir,
            binary_cache_keep: 3,
            seed: 0,
            metrics_addr: None,
            init_policy: None,
            private_vcs_mappings: Vec::new(),
        }
    }
}

impl Settings {
    /// The image a run uses: the stack's own; else, for an Ansible stack, the Ansible
    /// default; else the general default. A blank image counts as none.
    pub fn runner_image(&self, spec: &protocol::api::RunSpec) -> String {
        match spec.image.as_deref().filter(|i| !i.trim().is_empty()) {
            Some(image) => image.to_string(),
            None if spec.is_ansible() => self.default_ansible_runner_image.clone(),
            None => self.default_runner_image.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::api::{vendors, RunSpec, RunType};

    #[test]
    fn runner_image_is_the_stacks_else_its_vendors_default() {
        let mut s = Settings::isolated(PathBuf::from("/data"));
        s.default_runner_image = "my/terraform:1".into();
        s.default_ansible_runner_image = "my/ansible:1".into();
        let spec = |image: Option<&str>, vendor: Option<&str>| RunSpec {
            run_ulid: "R".into(),
            stack_id: "s".into(),
            run_type: RunType::Tracked,
            image: image.map(str::to_string),
            env: BTreeMap::new(),
            vendor: vendor.map(str::to_string),
        };
        assert_eq!(s.runner_image(&spec(None, None)), "my/terraform:1");
        assert_eq!(
            s.runner_image(&spec(None, Some(vendors::ANSIBLE))),
            "my/ansible:1"
        );
        // A blank image is no image.
        assert_eq!(
            s.runner_image(&spec(Some(" "), Some(vendors::ANSIBLE))),
            "my/ansible:1"
        );
        // The stack's own image always wins; other vendors get the general default.
        assert_eq!(
            s.runner_image(&spec(Some("own:2"), Some(vendors::ANSIBLE))),
            "own:2"
        );
        assert_eq!(
            s.runner_image(&spec(None, Some("pulumi"))),
            "my/terraform:1"
        );
        assert_eq!(
            Settings::isolated(PathBuf::from("/d")).default_ansible_runner_image,
            crate::config::DEFAULT_ANSIBLE_RUNNER_IMAGE
        );
    }

    #[test]
    fn debug_never_shows_secret_values() {
        let mut s = Settings::isolated(PathBuf::from("/data"));
        s.passed_env = vec![PassedEnv {
            name: "AWS_SECRET_ACCESS_KEY".into(),
            value: "passed-s3cret-value".into(),
            applies_to: MountScope::All,
        }];
        s.masked_values = vec!["masked-s3cret-value".into()];
        s.private_vcs_mappings = vec![PrivateVcsMapping {
            name: "ghe".into(),
            base_endpoint: "https://u:vcs-s3cret@ghe.internal".into(),
        }];
        for dbg in [
            format!("{s:?}"),
            format!("{:#?}", s),
            format!("{:?}", s.passed_env[0]),
            format!("{:?}", s.private_vcs_mappings[0]),
        ] {
            for secret in ["passed-s3cret-value", "masked-s3cret-value", "vcs-s3cret"] {
                assert!(!dbg.contains(secret), "{secret} in {dbg}");
            }
        }
        let dbg = format!("{s:?}");
        assert!(dbg.contains("AWS_SECRET_ACCESS_KEY"), "{dbg}");
        assert!(dbg.contains("ghe.internal"), "{dbg}");
    }
}
