//! Environment -> validated [`LauncherConfig`] (ripgrep's "low-level args -> HiArgs").
//!
//! Everything is read through an [`EnvSource`] (linkerd's env-config model), so tests pass a
//! map instead of touching the process environment. Every variable documented for
//! Spacelift's Docker launcher (research/spacelift.md section 4) is honoured with its
//! documented meaning and default, plus our own `SPACELIFT_LAUNCHER_*` knobs. A bad value
//! gets an error naming the variable and what was expected; secrets are never quoted.
//!
//! Conventions:
//! - An empty (or all-whitespace) value counts as unset, for every optional variable.
//! - Booleans accept Go's `strconv.ParseBool` spellings: `1 t T TRUE true True` and
//!   `0 f F FALSE false False`.
//! - Durations are Go durations: `7m`, `1h30m`, `90s`, `1.5h`, `500ms` (units ns, us, µs,
//!   ms, s, m, h), positive and at most Go's maximum, 2562047h47m16.854775807s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use thiserror::Error;

use crate::credentials::{Credentials, CredentialsError, KEY_VAR, TOKEN_VAR};
use crate::init_policy::InitPolicy;
use crate::secret::{ExposeSecret, SecretString};
use crate::settings::{ExtraMount, MountScope, PassedEnv, PrivateVcsMapping, Settings};

// ---------------------------------------------------------------------------------------
// Where variables come from

/// A source of environment variables.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
    /// All variables (for prefix scans such as `SPACELIFT_METADATA_*`).
    fn vars(&self) -> Vec<(String, String)>;
}

/// The process environment. Non-UTF-8 variables are ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
    }
}

/// A fixed map, for tests and simulations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapEnv(pub BTreeMap<String, String>);

impl MapEnv {
    pub fn new<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> MapEnv {
        MapEnv(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
    pub fn set(&mut self, k: impl Into<String>, v: impl Into<String>) -> &mut Self {
        self.0.insert(k.into(), v.into());
        self
    }
}

impl EnvSource for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
    fn vars(&self) -> Vec<(String, String)> {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

// ---------------------------------------------------------------------------------------
// The result

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Proxy settings for the HTTPS client (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`; the
/// upper-case spelling wins over the lower-case one). MQTT does not go through them.
/// `Debug` hides credentials in the proxy URLs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    pub http: Option<String>,
    pub https: Option<String>,
    pub no_proxy: Option<String>,
}

fn redact_url(u: &Option<String>) -> Option<String> {
    u.as_ref().map(|u| match reqwest::Url::parse(u) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_username("<redacted>");
            let _ = url.set_password(None);
            url.to_string()
        }
        Ok(_) => u.clone(),
        Err(_) => "<unparsable>".to_string(),
    })
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("http", &redact_url(&self.http))
            .field("https", &redact_url(&self.https))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

/// Command-line overrides (the CLI wins over the environment).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--capacity N`.
    pub capacity: Option<u32>,
}

/// The launcher's whole configuration, validated. `Debug` redacts secrets: the key, the
/// values of whitelisted and masked variables, proxy credentials.
#[derive(Clone)]
pub struct LauncherConfig {
    pub settings: Settings,
    pub credentials: Credentials,
    /// `DOCKER_HOST` (`unix://...`, `tcp://...`, `http://...`); None = `/var/run/docker.sock`.
    pub docker_host: Option<String>,
    /// `SPACELIFT_LAUNCHER_LOG_FORMAT` (`text` | `json`; default `text`).
    pub log_format: LogFormat,
    pub proxy: ProxyConfig,
    /// `ADDITIONAL_ROOT_CAS`, parsed: trusted for the backend's HTTPS and MQTT servers, on
    /// top of the system roots and the token's `ca_certificate`.
    pub additional_root_cas: Vec<CertificateDer<'static>>,
    /// `SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED`: a worker feature; the core passes it to
    /// the worker's environment.
    pub sensitive_output_upload: bool,
    /// `SPACELIFT_DEFAULT_ANSIBLE_RUNNER_IMAGE` (kept for completeness; protocol v1 has no
    /// Ansible run kind, so the core uses `settings.default_runner_image`).
    pub default_ansible_runner_image: String,
    /// Non-fatal findings to log at startup (a whitelisted variable that is unset, ...).
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for LauncherConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secret values in the settings redact themselves (crate::secret).
        f.debug_struct("LauncherConfig")
            .field("settings", &self.settings)
            .field("credentials", &self.credentials)
            .field("docker_host", &self.docker_host)
            .field("log_format", &self.log_format)
            .field("proxy", &self.proxy)
            .field("additional_root_cas", &self.additional_root_cas.len())
            .field("sensitive_output_upload", &self.sensitive_output_upload)
            .field(
                "default_ansible_runner_image",
                &self.default_ansible_runner_image,
            )
            .field("warnings", &self.warnings)
            .finish()
    }
}

/// Spacelift's documented default Ansible runner image.
pub const DEFAULT_ANSIBLE_RUNNER_IMAGE: &str = "public.ecr.aws/spacelift/runner-ansible:latest";

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var} is required but not set ({hint})")]
    Missing {
        var: &'static str,
        hint: &'static str,
    },
    /// `message` says what was expected (and quotes the value only for non-secret variables).
    #[error("{var}: {message}")]
    Invalid { var: String, message: String },
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

fn invalid(var: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var: var.to_string(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------
// Variable names and help

pub mod vars {
    pub const TOKEN: &str = "SPACELIFT_TOKEN";
    pub const POOL_PRIVATE_KEY: &str = "SPACELIFT_POOL_PRIVATE_KEY";
    pub const MASK_ENVS: &str = "SPACELIFT_MASK_ENVS";
    pub const SENSITIVE_OUTPUT_UPLOAD: &str = "SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED";
    pub const DEBUG: &str = "SPACELIFT_DEBUG";
    pub const RUN_LOGS_ON_STDOUT: &str = "SPACELIFT_RUN_LOGS_ON_STANDARD_OUTPUT_ENABLED";
    pub const RUN_INITIALIZATION_POLICY: &str = "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY";
    pub const LOGS_TIMEOUT: &str = "SPACELIFT_LAUNCHER_LOGS_TIMEOUT";
    pub const RUN_TIMEOUT: &str = "SPACELIFT_LAUNCHER_RUN_TIMEOUT";
    pub const PREPARE_TIMEOUT: &str = "SPACELIFT_LAUNCHER_PREPARE_TIMEOUT";
    pub const RUN_OUTPUT_BUFFER_MIB: &str = "SPACELIFT_LAUNCHER_RUN_OUTPUT_BUFFER_MIB";
    pub const DOCKER_CONFIG_DIR: &str = "SPACELIFT_DOCKER_CONFIG_DIR";
    pub const WHITELIST_ENVS: &str = "SPACELIFT_WHITELIST_ENVS";
    pub const EXTRA_MOUNTS: &str = "SPACELIFT_WORKER_EXTRA_MOUNTS";
    pub const RO_EXTRA_MOUNTS: &str = "SPACELIFT_WORKER_RO_EXTRA_MOUNTS";
    pub const WO_EXTRA_MOUNTS: &str = "SPACELIFT_WORKER_WO_EXTRA_MOUNTS";
    pub const NETWORK: &str = "SPACELIFT_WORKER_NETWORK";
    pub const RUNTIME: &str = "SPACELIFT_WORKER_RUNTIME";
    pub const DEFAULT_RUNNER_IMAGE: &str = "SPACELIFT_DEFAULT_RUNNER_IMAGE";
    pub const DEFAULT_ANSIBLE_RUNNER_IMAGE: &str = "SPACELIFT_DEFAULT_ANSIBLE_RUNNER_IMAGE";
    pub const METADATA_PREFIX: &str = "SPACELIFT_METADATA_";
    pub const PRIVATEVCS_NAME_PREFIX: &str = "SPACELIFT_PRIVATEVCS_MAPPING_NAME_";
    pub const PRIVATEVCS_ENDPOINT_PREFIX: &str = "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_";
    pub const DOCKER_HOST: &str = "DOCKER_HOST";
    pub const ADDITIONAL_ROOT_CAS: &str = "ADDITIONAL_ROOT_CAS";
    pub const CAPACITY: &str = "SPACELIFT_LAUNCHER_CAPACITY";
    pub const STOP_GRACE: &str = "SPACELIFT_LAUNCHER_STOP_GRACE";
    pub const DATA_DIR: &str = "SPACELIFT_LAUNCHER_DATA_DIR";
    pub const BINARY_CACHE_KEEP: &str = "SPACELIFT_LAUNCHER_BINARY_CACHE_KEEP";
    pub const SEED: &str = "SPACELIFT_LAUNCHER_SEED";
    pub const METRICS_ADDR: &str = "SPACELIFT_LAUNCHER_METRICS_ADDR";
    pub const LOG_FORMAT: &str = "SPACELIFT_LAUNCHER_LOG_FORMAT";
}

/// Every variable with its meaning and default, for `--help`.
pub const ENV_HELP: &str = "\
ENVIRONMENT
  SPACELIFT_TOKEN (required)
      The worker pool's token (base64 of the worker-pool-<id>.config file).
  SPACELIFT_POOL_PRIVATE_KEY (required)
      The pool's private key: the whole PEM file base64-encoded on one line
      (base64 -w0 spacelift.key). PKCS#8 or PKCS#1 RSA, or an EC key. Must match
      the certificate in SPACELIFT_TOKEN.
  SPACELIFT_MASK_ENVS
      Comma list of whitelisted variables whose values are masked (*****) in run logs.
  SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED (default false)
      Let the worker upload sensitive outputs; passed to the worker.
  SPACELIFT_DEBUG (default false)
      Log the launcher's own debug events (Docker calls and their results, run state
      changes, MQTT messages by id). Never values: dependencies (bollard, hyper, reqwest,
      rustls, rumqttc) stay at info, even under RUST_LOG, as they log whole requests.
  SPACELIFT_RUN_LOGS_ON_STANDARD_OUTPUT_ENABLED (default false)
      Also print run logs on standard output, structured (run_ulid, stack_id, ts, msg).
  SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY
      Path of a Rego initialization policy (package spacelift, deny[msg] rules; Rego v0
      or v1), compiled at startup: an unreadable or invalid policy stops the launcher.
      Before each run's image is pulled, data.spacelift.deny is evaluated with input
      {run: {id, type}, static_run_environment: {run_ulid, run_type, stack_slug},
      docker_image, worker_version} (type: PROPOSED, TRACKED, TASK, DESTROY, TESTING).
      Any deny message (or an evaluation error) fails the run, reason
      initialization_policy_denied; no container is created. exec() is not available.
  SPACELIFT_LAUNCHER_LOGS_TIMEOUT (default 7m)
      Go duration: a run that prints nothing for this long is killed.
  SPACELIFT_LAUNCHER_RUN_TIMEOUT (default 70m)
      Go duration: the longest a run may take.
  SPACELIFT_LAUNCHER_PREPARE_TIMEOUT (default 15m)
      Go duration: the longest a run may spend preparing (worker binary download,
      initialization policy, image pull) before its container is created; past it the
      run ends timed_out, reason prepare_timeout, and no container is created.
  SPACELIFT_LAUNCHER_RUN_OUTPUT_BUFFER_MIB (default 64)
      Run output (MiB, per run) held while the backend is slow or away; beyond it the
      launcher stops reading the run's output (Docker keeps it) until room frees.
  SPACELIFT_DOCKER_CONFIG_DIR
      Directory holding a Docker config.json (from docker login) with registry credentials.
      As the docker CLI: credHelpers[registry], else credsStore, names a helper
      docker-credential-<name> run from the launcher's PATH (30s limit, output never
      logged); else the auths entry. A missing or failing helper fails the pull.
  SPACELIFT_WHITELIST_ENVS
      Comma list of launcher variables passed to runs. An entry ro_NAME (wo_NAME) is passed
      as NAME to read-only (write) runs only; its value is the launcher's variable ro_NAME
      (wo_NAME) if set, else NAME. Read-only runs are proposed runs and module tests.
  SPACELIFT_WORKER_EXTRA_MOUNTS
      Comma list of /host:/container[:ro] bind mounts for every run. Host paths are on
      the Docker daemon's filesystem. Both paths must be absolute.
  SPACELIFT_WORKER_RO_EXTRA_MOUNTS, SPACELIFT_WORKER_WO_EXTRA_MOUNTS
      The same, for read-only runs only / write runs only.
  SPACELIFT_WORKER_NETWORK (default bridge)
      Docker network of run containers.
  SPACELIFT_WORKER_RUNTIME (default: the daemon's default runtime)
      OCI runtime of run containers, e.g. runsc.
  SPACELIFT_DEFAULT_RUNNER_IMAGE (default public.ecr.aws/spacelift/runner-terraform:latest)
      Runner image for stacks that set none.
  SPACELIFT_DEFAULT_ANSIBLE_RUNNER_IMAGE (default public.ecr.aws/spacelift/runner-ansible:latest)
      Accepted for compatibility; protocol v1 has no Ansible run kind.
  SPACELIFT_METADATA_<key>=<value>
      Worker metadata {<key>: <value>} shown in the Workers tab (key keeps its case).
  SPACELIFT_PRIVATEVCS_MAPPING_NAME_<n>, SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_<n>
      (n = 0, 1, ...) Map a VCS-agent pool name to a URL (http:// or https://) the worker
      reaches the VCS at directly. Each NAME_<n> needs its BASE_ENDPOINT_<n> and vice
      versa. Passed to every run, renumbered from 0 in the order of <n>.
  DOCKER_HOST (default unix:///var/run/docker.sock)
      Docker daemon: unix:///path/to/docker.sock or tcp://host:port (plain HTTP).
  HTTP_PROXY, HTTPS_PROXY, NO_PROXY (or lower case)
      Proxies for the launcher's HTTPS calls (not for MQTT).
  ADDITIONAL_ROOT_CAS
      base64 of {\"caCertificates\":[\"<base64 PEM>\", ...]}: extra CAs trusted for the
      backend's HTTPS and MQTT servers.
  SPACELIFT_LAUNCHER_CAPACITY (default 1; --capacity overrides)
      Runs this launcher takes at once.
  SPACELIFT_LAUNCHER_STOP_GRACE (default 10s)
      Go duration between SIGTERM and SIGKILL when stopping a run's container.
  SPACELIFT_LAUNCHER_DATA_DIR (default /opt/spacelift)
      Worker-binary cache and launcher state. The Docker daemon must see the same path.
  SPACELIFT_LAUNCHER_BINARY_CACHE_KEEP (default 3)
      Worker-binary versions kept in the cache (plus any in use).
  SPACELIFT_LAUNCHER_SEED (default: random)
      Seed of the launcher's RNG (backoff jitter), so simulations replay.
  SPACELIFT_LAUNCHER_METRICS_ADDR (default: off)
      host:port serving /metrics and /healthz.
  SPACELIFT_LAUNCHER_LOG_FORMAT (default text)
      text or json (one object a line), on standard error. Text is coloured only when
      standard error is a terminal. RUST_LOG (e.g. launcher::run=trace) overrides levels.
";

/// Returns [`ENV_HELP`].
pub fn env_help() -> &'static str {
    ENV_HELP
}

// ---------------------------------------------------------------------------------------
// Loading

/// Builds the configuration from `env` (no command-line overrides).
pub fn load(env: &dyn EnvSource) -> Result<LauncherConfig, ConfigError> {
    load_with(env, &Overrides::default())
}

/// Builds the configuration from `env`, with command-line `overrides` winning.
/// Decodes and cross-checks the credentials; makes no connection.
pub fn load_with(
    env: &dyn EnvSource,
    overrides: &Overrides,
) -> Result<LauncherConfig, ConfigError> {
    let r = Reader { env };
    let mut warnings = Vec::new();

    // Before the credentials: a broken policy is reported even when nothing else is set.
    let init_policy = match r.get(vars::RUN_INITIALIZATION_POLICY) {
        None => None,
        Some(path) => Some(Arc::new(
            InitPolicy::load(Path::new(&path))
                .map_err(|e| invalid(vars::RUN_INITIALIZATION_POLICY, e))?,
        )),
    };

    let token_text = r.get(TOKEN_VAR).ok_or(ConfigError::Missing {
        var: vars::TOKEN,
        hint: "the base64 worker pool token from the pool's page",
    })?;
    let key_text = r.get(KEY_VAR).ok_or(ConfigError::Missing {
        var: vars::POOL_PRIVATE_KEY,
        hint: "base64 -w0 of the PEM private key the pool's CSR was made with",
    })?;
    let credentials = Credentials::from_env_text(&token_text, &key_text)?;

    let capacity = match overrides.capacity {
        Some(0) => return Err(invalid("--capacity", "expected a whole number >= 1, got 0")),
        Some(c) => c,
        None => r.number(vars::CAPACITY, 1u32, 1)?,
    };

    let (passed_env, mut w) = whitelist(&r)?;
    warnings.append(&mut w);
    let (masked_values, mut w) = masked(&r, &passed_env);
    warnings.append(&mut w);

    let mut extra_mounts = mounts(&r, vars::EXTRA_MOUNTS, MountScope::All)?;
    extra_mounts.extend(mounts(&r, vars::RO_EXTRA_MOUNTS, MountScope::ReadOnlyRuns)?);
    extra_mounts.extend(mounts(&r, vars::WO_EXTRA_MOUNTS, MountScope::WriteRuns)?);

    let (private_vcs_mappings, mut w) = private_vcs_mappings(&r)?;
    warnings.append(&mut w);

    let docker_config_dir = r.get(vars::DOCKER_CONFIG_DIR).map(PathBuf::from);
    if let Some(dir) = &docker_config_dir {
        if !dir.join("config.json").is_file() {
            warnings.push(format!(
                "{}: {} has no config.json; pulls will be anonymous",
                vars::DOCKER_CONFIG_DIR,
                dir.display()
            ));
        }
    }

    let seed = match r.get(vars::SEED) {
        None => rand::random::<u64>(),
        Some(s) => parse_u64(&s).ok_or_else(|| {
            invalid(
                vars::SEED,
                format!("expected an unsigned 64-bit integer (decimal or 0x hex), got {s:?}"),
            )
        })?,
    };

    let metrics_addr = match r.get(vars::METRICS_ADDR) {
        None => None,
        Some(s) => Some(s.parse::<SocketAddr>().map_err(|_| {
            invalid(
                vars::METRICS_ADDR,
                format!("expected host:port with an IP address, e.g. 127.0.0.1:9100, got {s:?}"),
            )
        })?),
    };

    let data_dir = PathBuf::from(
        r.get(vars::DATA_DIR)
            .unwrap_or_else(|| "/opt/spacelift".to_string()),
    );
    if !data_dir.is_absolute() {
        return Err(invalid(
            vars::DATA_DIR,
            format!(
                "must be an absolute path (run containers bind-mount from it), got {:?}",
                data_dir.display().to_string()
            ),
        ));
    }

    let settings = Settings {
        capacity,
        default_runner_image: r
            .get(vars::DEFAULT_RUNNER_IMAGE)
            .unwrap_or_else(|| crate::DEFAULT_RUNNER_IMAGE.to_string()),
        network: r.get(vars::NETWORK).unwrap_or_else(|| "bridge".to_string()),
        runtime: r.get(vars::RUNTIME),
        extra_mounts,
        passed_env,
        masked_values,
        logs_timeout: r.duration(vars::LOGS_TIMEOUT, Duration::from_secs(7 * 60))?,
        run_timeout: r.duration(vars::RUN_TIMEOUT, Duration::from_secs(70 * 60))?,
        prepare_timeout: r.duration(vars::PREPARE_TIMEOUT, Duration::from_secs(15 * 60))?,
        output_buffer_bytes: r
            .number(vars::RUN_OUTPUT_BUFFER_MIB, 64usize, 1)?
            .saturating_mul(1 << 20),
        stop_grace: r.duration(vars::STOP_GRACE, Duration::from_secs(10))?,
        run_logs_on_stdout: r.boolean(vars::RUN_LOGS_ON_STDOUT)?,
        debug: r.boolean(vars::DEBUG)?,
        docker_config_dir,
        metadata: metadata(env),
        data_dir,
        binary_cache_keep: r.number(vars::BINARY_CACHE_KEEP, 3usize, 1)?,
        seed,
        metrics_addr,
        init_policy,
        private_vcs_mappings,
    };

    let docker_host = match r.get(vars::DOCKER_HOST) {
        None => None,
        Some(h) => {
            validate_docker_host(&h)?;
            Some(h)
        }
    };

    let log_format = match r.get(vars::LOG_FORMAT) {
        None => LogFormat::Text,
        Some(s) => match s.to_ascii_lowercase().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => {
                return Err(invalid(
                    vars::LOG_FORMAT,
                    format!("expected text or json, got {s:?}"),
                ))
            }
        },
    };

    let proxy = ProxyConfig {
        http: r.proxy("HTTP_PROXY", "http_proxy")?,
        https: r.proxy("HTTPS_PROXY", "https_proxy")?,
        no_proxy: r.get("NO_PROXY").or_else(|| r.get("no_proxy")),
    };

    let additional_root_cas = match r.get(vars::ADDITIONAL_ROOT_CAS) {
        None => Vec::new(),
        Some(text) => parse_additional_root_cas(&text)?,
    };

    Ok(LauncherConfig {
        settings,
        credentials,
        docker_host,
        log_format,
        proxy,
        additional_root_cas,
        sensitive_output_upload: r.boolean(vars::SENSITIVE_OUTPUT_UPLOAD)?,
        default_ansible_runner_image: r
            .get(vars::DEFAULT_ANSIBLE_RUNNER_IMAGE)
            .unwrap_or_else(|| DEFAULT_ANSIBLE_RUNNER_IMAGE.to_string()),
        warnings,
    })
}

struct Reader<'a> {
    env: &'a dyn EnvSource,
}

impl Reader<'_> {
    /// The value, trimmed; empty counts as unset.
    fn get(&self, name: &str) -> Option<String> {
        self.env
            .var(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn boolean(&self, name: &str) -> Result<bool, ConfigError> {
        match self.get(name) {
            None => Ok(false),
            Some(v) => parse_bool(&v).ok_or_else(|| {
                invalid(name, format!("expected true or false (or 1/0), got {v:?}"))
            }),
        }
    }

    fn duration(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => match parse_go_duration(&v) {
                Ok(d) if d > Duration::ZERO => Ok(d),
                Ok(_) => Err(invalid(name, format!("must be positive, got {v:?}"))),
                Err(e) => Err(invalid(
                    name,
                    format!("expected a Go duration such as 7m, 1h30m or 90s, got {v:?} ({e})"),
                )),
            },
        }
    }

    fn number<T>(&self, name: &str, default: T, min: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        match self.get(name) {
            None => Ok(default),
            Some(v) => match v.parse::<T>() {
                Ok(n) if n >= min => Ok(n),
                _ => Err(invalid(
                    name,
                    format!("expected a whole number >= {min}, got {v:?}"),
                )),
            },
        }
    }

    fn proxy(&self, upper: &str, lower: &str) -> Result<Option<String>, ConfigError> {
        let (name, value) = match self.get(upper) {
            Some(v) => (upper, v),
            None => match self.get(lower) {
                Some(v) => (lower, v),
                None => return Ok(None),
            },
        };
        // Proxy URLs may hold credentials: never quote them.
        match reqwest::Url::parse(&value) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https" | "socks5" | "socks5h")
                    && u.has_host() =>
            {
                Ok(Some(value))
            }
            _ => Err(invalid(
                name,
                "expected a proxy URL such as http://proxy.example:3128",
            )),
        }
    }
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Go's longest duration (`time.Duration` is an int64 of nanoseconds).
const GO_MAX_DURATION_NANOS: u128 = i64::MAX as u128;
const TOO_LONG: &str = "longer than the maximum, 2562047h47m16.854775807s";

/// Parses a Go duration (`time.ParseDuration`): `[-+]?(\d*(\.\d*)?(ns|us|µs|μs|ms|s|m|h))+`
/// or `0`, at most Go's maximum (so no later `Instant + Duration` can overflow). Negative
/// durations are rejected (we have no use for them).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.starts_with('-') {
        return Err("negative durations are not allowed".into());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err("empty".into());
    }
    let mut total: u128 = 0; // nanoseconds
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err("expected a number before each unit".into());
        }
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let nanos_per: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err("missing unit (ns, us, ms, s, m, h)".into()),
            other => return Err(format!("unknown unit {other:?}")),
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| TOO_LONG.to_string())?
        };
        let mut value = int
            .checked_mul(nanos_per)
            .ok_or_else(|| TOO_LONG.to_string())?;
        if !frac.is_empty() {
            let digits = frac.len().min(18) as u32;
            let frac_num: u128 = frac[..digits as usize]
                .parse()
                .map_err(|_| "bad fraction".to_string())?;
            value = value
                .checked_add(frac_num * nanos_per / 10u128.pow(digits))
                .ok_or_else(|| TOO_LONG.to_string())?;
        }
        total = total
            .checked_add(value)
            .filter(|t| *t <= GO_MAX_DURATION_NANOS)
            .ok_or_else(|| TOO_LONG.to_string())?;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| TOO_LONG.to_string())?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// `SPACELIFT_WHITELIST_ENVS`: see [`ENV_HELP`] for the `ro_`/`wo_` interpretation.
fn whitelist(r: &Reader<'_>) -> Result<(Vec<PassedEnv>, Vec<String>), ConfigError> {
    let mut out: Vec<PassedEnv> = Vec::new();
    let mut warnings = Vec::new();
    let Some(list) = r.get(vars::WHITELIST_ENVS) else {
        return Ok((out, warnings));
    };
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (scope, name) = if let Some(n) = entry.strip_prefix("ro_") {
            (MountScope::ReadOnlyRuns, n)
        } else if let Some(n) = entry.strip_prefix("wo_") {
            (MountScope::WriteRuns, n)
        } else {
            (MountScope::All, entry)
        };
        if !valid_env_name(name) {
            return Err(invalid(
                vars::WHITELIST_ENVS,
                format!("entry {entry:?} is not a variable name (letters, digits and _)"),
            ));
        }
        // A scoped entry prefers the scoped variable (so RO and write runs can get
        // different values under the same name), else the plain one.
        let value = if scope == MountScope::All {
            r.env.var(name)
        } else {
            r.env.var(entry).or_else(|| r.env.var(name))
        };
        match value {
            Some(value) => {
                out.retain(|p| !(p.name == name && p.applies_to == scope));
                out.push(PassedEnv {
                    name: name.to_string(),
                    value: value.into(),
                    applies_to: scope,
                });
            }
            None => warnings.push(format!(
                "{}: {entry} is not set in the launcher's environment; not passed to runs",
                vars::WHITELIST_ENVS
            )),
        }
    }
    Ok((out, warnings))
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `SPACELIFT_MASK_ENVS`: the values (from the launcher's environment, and from the
/// whitelisted values of that name) to mask. Empty values are never masked.
fn masked(r: &Reader<'_>, passed: &[PassedEnv]) -> (Vec<SecretString>, Vec<String>) {
    let mut values: Vec<String> = Vec::new();
    let mut warnings = Vec::new();
    let Some(list) = r.get(vars::MASK_ENVS) else {
        return (Vec::new(), warnings);
    };
    for name in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let mut found = false;
        for p in passed.iter().filter(|p| p.name == name) {
            found = true;
            values.push(p.value.expose_secret().to_string());
        }
        if let Some(v) = r.env.var(name) {
            found = true;
            values.push(v);
        }
        if !passed.iter().any(|p| p.name == name) {
            warnings.push(format!(
                "{}: {name} is not in {}; it is masked but not passed to runs",
                vars::MASK_ENVS,
                vars::WHITELIST_ENVS
            ));
        } else if !found {
            warnings.push(format!("{}: {name} is not set", vars::MASK_ENVS));
        }
    }
    values.retain(|v| !v.is_empty());
    values.sort();
    values.dedup();
    (
        values.into_iter().map(SecretString::from).collect(),
        warnings,
    )
}

/// `/host:/container[:ro|:rw]` entries, comma separated.
fn mounts(r: &Reader<'_>, var: &str, scope: MountScope) -> Result<Vec<ExtraMount>, ConfigError> {
    let Some(list) = r.get(var) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let parts: Vec<&str> = entry.split(':').collect();
        let (host, container, mode) = match parts.as_slice() {
            [h, c] => (*h, *c, None),
            [h, c, m] if matches!(*m, "ro" | "rw") => (*h, *c, Some(*m)),
            _ => {
                return Err(invalid(
                    var,
                    format!("entry {entry:?} is not /host/path:/container/path[:ro]"),
                ))
            }
        };
        for (what, p) in [("host", host), ("container", container)] {
            if !p.starts_with('/') {
                return Err(invalid(
                    var,
                    format!("entry {entry:?}: the {what} path {p:?} must be absolute"),
                ));
            }
        }
        let container = match mode {
            Some("ro") => format!("{container}:ro"),
            _ => container.to_string(),
        };
        out.push(ExtraMount {
            host: host.to_string(),
            container,
            applies_to: scope,
        });
    }
    Ok(out)
}

/// `SPACELIFT_PRIVATEVCS_MAPPING_{NAME,BASE_ENDPOINT}_<n>`: complete pairs, ordered by `<n>`.
fn private_vcs_mappings(
    r: &Reader<'_>,
) -> Result<(Vec<PrivateVcsMapping>, Vec<String>), ConfigError> {
    // n -> (the variable as spelled, its value): errors name the variable that was set.
    let mut names: BTreeMap<u32, (String, String)> = BTreeMap::new();
    let mut endpoints: BTreeMap<u32, (String, String)> = BTreeMap::new();
    for (var, _) in r.env.vars() {
        let (map, suffix) = if let Some(n) = var.strip_prefix(vars::PRIVATEVCS_NAME_PREFIX) {
            (&mut names, n)
        } else if let Some(n) = var.strip_prefix(vars::PRIVATEVCS_ENDPOINT_PREFIX) {
            (&mut endpoints, n)
        } else {
            continue;
        };
        // Empty counts as unset, as everywhere.
        let Some(value) = r.get(&var) else { continue };
        let n = match suffix.parse::<u32>() {
            Ok(n) if suffix.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(invalid(
                    &var,
                    "the suffix must be a number: _0, _1, ... (one per VCS-agent pool)",
                ))
            }
        };
        if map.insert(n, (var.clone(), value)).is_some() {
            return Err(invalid(
                &var,
                format!("set twice for n = {n} (leading zeros?)"),
            ));
        }
    }
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (n, (name_var, _)) in &names {
        if !endpoints.contains_key(n) {
            let suffix = &name_var[vars::PRIVATEVCS_NAME_PREFIX.len()..];
            return Err(invalid(
                name_var,
                format!(
                    "is set but {}{suffix} is not",
                    vars::PRIVATEVCS_ENDPOINT_PREFIX
                ),
            ));
        }
    }
    for (n, (endpoint_var, _)) in &endpoints {
        if !names.contains_key(n) {
            let suffix = &endpoint_var[vars::PRIVATEVCS_ENDPOINT_PREFIX.len()..];
            return Err(invalid(
                endpoint_var,
                format!("is set but {}{suffix} is not", vars::PRIVATEVCS_NAME_PREFIX),
            ));
        }
    }
    for (i, (n, (name_var, name))) in names.into_iter().enumerate() {
        let (endpoint_var, endpoint) = endpoints.remove(&n).unwrap_or_default();
        match reqwest::Url::parse(&endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
            _ => {
                // Credentials in a URL are never quoted.
                let shown = if endpoint.contains('@') {
                    String::new()
                } else {
                    format!(", got {endpoint:?}")
                };
                return Err(invalid(
                    &endpoint_var,
                    format!("expected a URL with a scheme, such as https://vcs.example.com{shown}"),
                ));
            }
        }
        if usize::try_from(n).ok() != Some(i) {
            warnings.push(format!(
                "{name_var}: the mappings are not numbered 0, 1, ...; runs get this one as _{i}"
            ));
        }
        out.push(PrivateVcsMapping {
            name,
            base_endpoint: endpoint.into(),
        });
    }
    Ok((out, warnings))
}

/// `SPACELIFT_METADATA_<key>=<value>`: prefix stripped, case kept, empty keys skipped.
fn metadata(env: &dyn EnvSource) -> BTreeMap<String, String> {
    env.vars()
        .into_iter()
        .filter_map(|(k, v)| {
            let key = k.strip_prefix(vars::METADATA_PREFIX)?;
            (!key.is_empty()).then(|| (key.to_string(), v))
        })
        .collect()
}

fn validate_docker_host(h: &str) -> Result<(), ConfigError> {
    let ok = match h.split_once("://") {
        Some(("unix", path)) => path.starts_with('/'),
        Some(("tcp" | "http", rest)) => !rest.is_empty(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(
            vars::DOCKER_HOST,
            format!(
                "expected unix:///path/to/docker.sock or tcp://host:port, got {h:?} \
                 (TLS, ssh and named pipes are not supported)"
            ),
        ))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdditionalRootCas {
    #[serde(default)]
    ca_certificates: Vec<String>,
}

/// `ADDITIONAL_ROOT_CAS`: base64 JSON `{"caCertificates":["<base64 PEM>", ...]}`. Each entry
/// may hold several certificates. (A raw PEM instead of base64 PEM is tolerated.)
pub fn parse_additional_root_cas(text: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let var = vars::ADDITIONAL_ROOT_CAS;
    let json = protocol::token::decode_base64(var, text).map_err(|e| match e {
        protocol::ProtocolError::Base64 { offset, .. } => invalid(
            var,
            format!("unable to base64 decode: illegal base64 data at input byte {offset}"),
        ),
        other => invalid(var, other.to_string()),
    })?;
    let parsed: AdditionalRootCas = serde_json::from_slice(&json).map_err(|e| {
        invalid(
            var,
            format!("expected base64 of {{\"caCertificates\":[\"<base64 PEM>\"]}}: {e}"),
        )
    })?;
    let mut out = Vec::new();
    for (i, entry) in parsed.ca_certificates.iter().enumerate() {
        let pem = if entry.contains("-----BEGIN") {
            entry.as_bytes().to_vec()
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(entry.trim())
                .map_err(|e| invalid(var, format!("caCertificates[{i}] is not base64: {e}")))?
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(var, format!("caCertificates[{i}] is not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(invalid(
                var,
                format!("caCertificates[{i}] holds no PEM certificate"),
            ));
        }
        out.extend(certs);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::testing::{b64, TestPool};

    fn base() -> (MapEnv, TestPool) {
        let pool = TestPool::new();
        let env = MapEnv::new([
            (
                vars::TOKEN,
                pool.token("mqtts://127.0.0.1:8883", "https://127.0.0.1:8443"),
            ),
            (vars::POOL_PRIVATE_KEY, b64(&pool.key_pem)),
        ]);
        (env, pool)
    }

    fn with(pairs: &[(&str, &str)]) -> Result<LauncherConfig, ConfigError> {
        let (mut env, _pool) = base();
        for (k, v) in pairs {
            env.set(*k, *v);
        }
        load(&env)
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        with(pairs).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = with(&[]).unwrap();
        let s = &c.settings;
        assert_eq!(s.capacity, 1);
        assert_eq!(
            s.default_runner_image,
            "public.ecr.aws/spacelift/runner-terraform:latest"
        );
        assert_eq!(s.network, "bridge");
        assert_eq!(s.runtime, None);
        assert!(s.extra_mounts.is_empty());
        assert!(s.passed_env.is_empty());
        assert!(s.masked_values.is_empty());
        assert_eq!(s.logs_timeout, Duration::from_secs(420));
        assert_eq!(s.output_buffer_bytes, 64 << 20);
        assert_eq!(s.run_timeout, Duration::from_secs(4200));
        assert_eq!(s.prepare_timeout, Duration::from_secs(900));
        assert_eq!(s.stop_grace, Duration::from_secs(10));
        assert!(!s.run_logs_on_stdout);
        assert!(!s.debug);
        assert_eq!(s.docker_config_dir, None);
        assert!(s.metadata.is_empty());
        assert_eq!(s.data_dir, PathBuf::from("/opt/spacelift"));
        assert_eq!(s.binary_cache_keep, 3);
        assert_eq!(s.metrics_addr, None);
        assert_eq!(c.docker_host, None);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.proxy, ProxyConfig::default());
        assert!(c.additional_root_cas.is_empty());
        assert!(!c.sensitive_output_upload);
        assert_eq!(c.default_ansible_runner_image, DEFAULT_ANSIBLE_RUNNER_IMAGE);
        assert_eq!(c.credentials.token.pool_ulid, "01HZY0000000000000000POOL1");
    }

    #[test]
    fn every_variable_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        let c = with(&[
            (vars::CAPACITY, "4"),
            (vars::DEFAULT_RUNNER_IMAGE, "my/runner:1"),
            (vars::DEFAULT_ANSIBLE_RUNNER_IMAGE, "my/ansible:1"),
            (vars::NETWORK, "none"),
            (vars::RUNTIME, "runsc"),
            (vars::LOGS_TIMEOUT, "1h30m"),
            (vars::RUN_TIMEOUT, "90s"),
            (vars::PREPARE_TIMEOUT, "20m"),
            (vars::RUN_OUTPUT_BUFFER_MIB, "2"),
            (vars::STOP_GRACE, "1.5s"),
            (vars::RUN_LOGS_ON_STDOUT, "true"),
            (vars::DEBUG, "1"),
            (vars::SENSITIVE_OUTPUT_UPLOAD, "True"),
            (vars::DOCKER_CONFIG_DIR, dir.path().to_str().unwrap()),
            (vars::DATA_DIR, "/var/lib/launcher"),
            (vars::BINARY_CACHE_KEEP, "5"),
            (vars::SEED, "0x10"),
            (vars::METRICS_ADDR, "127.0.0.1:9100"),
            (vars::LOG_FORMAT, "JSON"),
            (vars::DOCKER_HOST, "tcp://127.0.0.1:2375"),
            ("HTTPS_PROXY", "http://proxy.local:3128"),
            ("http_proxy", "http://lower.local:3128"),
            ("NO_PROXY", "localhost,127.0.0.1"),
        ])
        .unwrap();
        let s = &c.settings;
        assert_eq!(s.capacity, 4);
        assert_eq!(s.default_runner_image, "my/runner:1");
        assert_eq!(c.default_ansible_runner_image, "my/ansible:1");
        assert_eq!(s.network, "none");
        assert_eq!(s.runtime.as_deref(), Some("runsc"));
        assert_eq!(s.logs_timeout, Duration::from_secs(5400));
        assert_eq!(s.run_timeout, Duration::from_secs(90));
        assert_eq!(s.prepare_timeout, Duration::from_secs(1200));
        assert_eq!(s.output_buffer_bytes, 2 << 20);
        assert_eq!(s.stop_grace, Duration::from_millis(1500));
        assert!(s.run_logs_on_stdout && s.debug && c.sensitive_output_upload);
        assert_eq!(s.docker_config_dir.as_deref(), Some(dir.path()));
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/launcher"));
        assert_eq!(s.binary_cache_keep, 5);
        assert_eq!(s.seed, 16);
        assert_eq!(s.metrics_addr, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.docker_host.as_deref(), Some("tcp://127.0.0.1:2375"));
        assert_eq!(
            c.proxy,
            ProxyConfig {
                http: Some("http://lower.local:3128".into()),
                https: Some("http://proxy.local:3128".into()),
                no_proxy: Some("localhost,127.0.0.1".into()),
            }
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn capacity_override_wins() {
        let (mut env, _p) = base();
        env.set(vars::CAPACITY, "2");
        let c = load_with(&env, &Overrides { capacity: Some(8) }).unwrap();
        assert_eq!(c.settings.capacity, 8);
        let e = load_with(&env, &Overrides { capacity: Some(0) }).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--capacity: expected a whole number >= 1, got 0"
        );
    }

    #[test]
    fn required_variables_are_named() {
        let e = load(&MapEnv::default()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("SPACELIFT_TOKEN is required but not set"),
            "{e}"
        );
        let (mut env, _p) = base();
        env.0.remove(vars::POOL_PRIVATE_KEY);
        let e = load(&env).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("SPACELIFT_POOL_PRIVATE_KEY is required but not set"),
            "{e}"
        );
        // Empty counts as unset.
        env.set(vars::POOL_PRIVATE_KEY, "  ");
        assert!(matches!(
            load(&env).unwrap_err(),
            ConfigError::Missing { .. }
        ));
    }

    #[test]
    fn bad_values_name_the_variable_and_expectation() {
        assert_eq!(
            err(&[(vars::CAPACITY, "zero")]),
            "SPACELIFT_LAUNCHER_CAPACITY: expected a whole number >= 1, got \"zero\""
        );
        assert_eq!(
            err(&[(vars::CAPACITY, "0")]),
            "SPACELIFT_LAUNCHER_CAPACITY: expected a whole number >= 1, got \"0\""
        );
        assert_eq!(
            err(&[(vars::BINARY_CACHE_KEEP, "-1")]),
            "SPACELIFT_LAUNCHER_BINARY_CACHE_KEEP: expected a whole number >= 1, got \"-1\""
        );
        let e = err(&[(vars::LOGS_TIMEOUT, "7")]);
        assert!(
            e.starts_with("SPACELIFT_LAUNCHER_LOGS_TIMEOUT: expected a Go duration such as 7m, 1h30m or 90s, got \"7\""),
            "{e}"
        );
        assert!(err(&[(vars::RUN_TIMEOUT, "7days")])
            .starts_with("SPACELIFT_LAUNCHER_RUN_TIMEOUT: expected a Go duration"));
        assert_eq!(
            err(&[(vars::STOP_GRACE, "0s")]),
            "SPACELIFT_LAUNCHER_STOP_GRACE: must be positive, got \"0s\""
        );
        assert_eq!(
            err(&[(vars::DEBUG, "yes")]),
            "SPACELIFT_DEBUG: expected true or false (or 1/0), got \"yes\""
        );
        assert!(err(&[(vars::RUN_LOGS_ON_STDOUT, "on")])
            .starts_with("SPACELIFT_RUN_LOGS_ON_STANDARD_OUTPUT_ENABLED: expected true or false"));
        assert!(err(&[(vars::SENSITIVE_OUTPUT_UPLOAD, "maybe")])
            .starts_with("SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED: expected true or false"));
        assert!(err(&[(vars::SEED, "abc")])
            .starts_with("SPACELIFT_LAUNCHER_SEED: expected an unsigned 64-bit integer"));
        assert!(err(&[(vars::METRICS_ADDR, "localhost")])
            .starts_with("SPACELIFT_LAUNCHER_METRICS_ADDR: expected host:port"));
        assert_eq!(
            err(&[(vars::LOG_FORMAT, "xml")]),
            "SPACELIFT_LAUNCHER_LOG_FORMAT: expected text or json, got \"xml\""
        );
        assert_eq!(
            err(&[(vars::DATA_DIR, "relative/dir")]),
            "SPACELIFT_LAUNCHER_DATA_DIR: must be an absolute path (run containers bind-mount from it), got \"relative/dir\""
        );
        assert!(err(&[(vars::DOCKER_HOST, "ssh://h")]).starts_with("DOCKER_HOST: expected unix://"));
        assert!(err(&[(vars::DOCKER_HOST, "unix://relative.sock")]).starts_with("DOCKER_HOST:"));
        let e = err(&[("HTTPS_PROXY", "http//user:s3cret@proxy")]);
        assert!(e.starts_with("HTTPS_PROXY: expected a proxy URL"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn go_durations() {
        let d = |s| parse_go_duration(s);
        assert_eq!(d("7m"), Ok(Duration::from_secs(420)));
        assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("2us"), Ok(Duration::from_micros(2)));
        assert_eq!(d("2µs"), Ok(Duration::from_micros(2)));
        assert_eq!(d("3ns"), Ok(Duration::from_nanos(3)));
        assert_eq!(d("1h0m0s"), Ok(Duration::from_secs(3600)));
        assert_eq!(d(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(d("0"), Ok(Duration::ZERO));
        assert!(d("7").is_err());
        assert!(d("-7m").is_err());
        assert!(d("7d").is_err());
        assert!(d("m").is_err());
        assert!(d("").is_err());
        assert!(d("1..2s").is_err());
    }

    /// Go's `time.Duration` tops out at 2562047h47m16.854775807s; beyond it Go refuses,
    /// and so do we (an `Instant + Duration` that large would overflow later).
    #[test]
    fn durations_beyond_gos_maximum_are_refused() {
        let d = |s| parse_go_duration(s);
        assert_eq!(
            d("2562047h47m16.854775807s"),
            Ok(Duration::new(9_223_372_036, 854_775_807))
        );
        for s in [
            "2562048h",
            "2562047h47m16.854775808s",
            "18446744073709551615s",
        ] {
            let e = d(s).unwrap_err();
            assert!(e.contains("2562047h"), "{s}: {e}");
        }
        let e = err(&[(vars::RUN_TIMEOUT, "2562048h")]);
        assert!(
            e.starts_with("SPACELIFT_LAUNCHER_RUN_TIMEOUT: ") && e.contains("2562047h"),
            "{e}"
        );
    }

    #[test]
    fn metadata_strips_prefix_keeps_case_skips_empty_key() {
        let c = with(&[
            ("SPACELIFT_METADATA_instance_id", "i-123"),
            ("SPACELIFT_METADATA_AsgId", "asg"),
            ("SPACELIFT_METADATA_", "ignored"),
            ("SPACELIFT_METADATA_empty", ""),
            ("OTHER_METADATA_x", "no"),
        ])
        .unwrap();
        let m: Vec<(&str, &str)> = c
            .settings
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            m,
            [("AsgId", "asg"), ("empty", ""), ("instance_id", "i-123")]
        );
    }

    #[test]
    fn mounts_parse_with_scopes_and_validate_paths() {
        let c = with(&[
            (vars::EXTRA_MOUNTS, "/a:/b, /c:/d:ro"),
            (vars::RO_EXTRA_MOUNTS, "/ro:/mnt/ro"),
            (vars::WO_EXTRA_MOUNTS, "/wo:/mnt/wo:rw"),
        ])
        .unwrap();
        let m = &c.settings.extra_mounts;
        let got: Vec<(&str, &str, MountScope)> = m
            .iter()
            .map(|m| (m.host.as_str(), m.container.as_str(), m.applies_to))
            .collect();
        assert_eq!(
            got,
            [
                ("/a", "/b", MountScope::All),
                ("/c", "/d:ro", MountScope::All),
                ("/ro", "/mnt/ro", MountScope::ReadOnlyRuns),
                ("/wo", "/mnt/wo", MountScope::WriteRuns),
            ]
        );
        assert_eq!(
            err(&[(vars::EXTRA_MOUNTS, "/a:b")]),
            "SPACELIFT_WORKER_EXTRA_MOUNTS: entry \"/a:b\": the container path \"b\" must be absolute"
        );
        assert_eq!(
            err(&[(vars::RO_EXTRA_MOUNTS, "a:/b")]),
            "SPACELIFT_WORKER_RO_EXTRA_MOUNTS: entry \"a:/b\": the host path \"a\" must be absolute"
        );
        assert_eq!(
            err(&[(vars::WO_EXTRA_MOUNTS, "/a")]),
            "SPACELIFT_WORKER_WO_EXTRA_MOUNTS: entry \"/a\" is not /host/path:/container/path[:ro]"
        );
    }

    #[test]
    fn whitelist_and_mask() {
        let c = with(&[
            (
                vars::WHITELIST_ENVS,
                "AWS_REGION, ro_AWS_KEY, wo_AWS_KEY, ro_PLAIN, MISSING",
            ),
            ("AWS_REGION", "eu-west-1"),
            ("ro_AWS_KEY", "read-key"),
            ("wo_AWS_KEY", "write-key"),
            ("AWS_KEY", "unscoped"),
            ("PLAIN", "plain"),
            (vars::MASK_ENVS, "AWS_KEY"),
        ])
        .unwrap();
        let got: Vec<(&str, &str, MountScope)> = c
            .settings
            .passed_env
            .iter()
            .map(|p| (p.name.as_str(), p.value.expose_secret(), p.applies_to))
            .collect();
        assert_eq!(
            got,
            [
                ("AWS_REGION", "eu-west-1", MountScope::All),
                ("AWS_KEY", "read-key", MountScope::ReadOnlyRuns),
                ("AWS_KEY", "write-key", MountScope::WriteRuns),
                ("PLAIN", "plain", MountScope::ReadOnlyRuns),
            ]
        );
        let masked: Vec<&str> = c
            .settings
            .masked_values
            .iter()
            .map(|v| v.expose_secret())
            .collect();
        assert_eq!(masked, ["read-key", "unscoped", "write-key"]);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(
            c.warnings[0].contains("MISSING is not set"),
            "{:?}",
            c.warnings
        );
        assert!(err(&[(vars::WHITELIST_ENVS, "A-B")])
            .starts_with("SPACELIFT_WHITELIST_ENVS: entry \"A-B\" is not a variable name"));
    }

    #[test]
    fn initialization_policy_is_compiled_at_startup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("init.rego");
        std::fs::write(
            &path,
            "package spacelift\n\ndeny[\"no tasks\"] {\n  input.run.type == \"TASK\"\n}\n",
        )
        .unwrap();
        let c = with(&[(vars::RUN_INITIALIZATION_POLICY, path.to_str().unwrap())]).unwrap();
        let p = c.settings.init_policy.as_ref().expect("policy loaded");
        assert_eq!(p.path(), path);
        let task = crate::init_policy::PolicyInput::new(
            "01R",
            protocol::api::RunType::Task,
            "s",
            "img",
            "1",
        );
        assert_eq!(
            p.evaluate(&task),
            Ok(crate::init_policy::Decision::Deny(vec!["no tasks".into()]))
        );
        // Unset (or empty): no policy.
        assert!(with(&[]).unwrap().settings.init_policy.is_none());
        assert!(with(&[(vars::RUN_INITIALIZATION_POLICY, " ")])
            .unwrap()
            .settings
            .init_policy
            .is_none());
        assert!(!ENV_HELP.contains("NOT SUPPORTED"));
        assert!(ENV_HELP.contains("initialization_policy_denied"));
    }

    #[test]
    fn invalid_initialization_policy_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.rego");
        std::fs::write(&path, "package spacelift\n\ndeny[msg] {\n").unwrap();
        let p = path.to_str().unwrap();
        let e = with(&[(vars::RUN_INITIALIZATION_POLICY, p)]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { var, .. } if var == vars::RUN_INITIALIZATION_POLICY)
        );
        // The variable, the file, and regorus's error with its position.
        assert_eq!(
            e.to_string(),
            format!(
                "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY: invalid Rego policy {p}:\n\
                 --> {p}:3:11\n  |\n3 | deny[msg] {{\n  |           ^\nerror: expecting }}"
            )
        );

        std::fs::write(&path, "package other\n\ndeny[\"x\"] { true }\n").unwrap();
        assert_eq!(
            err(&[(vars::RUN_INITIALIZATION_POLICY, p)]),
            format!(
                "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY: the policy {p} is package other, \
                 but an initialization policy must be `package spacelift`"
            )
        );
    }

    #[test]
    fn missing_initialization_policy_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.rego");
        let p = path.to_str().unwrap();
        let e = err(&[(vars::RUN_INITIALIZATION_POLICY, p)]);
        assert!(
            e.starts_with(&format!(
                "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY: cannot read the policy file {p}: "
            )),
            "{e}"
        );
        // Reported even before the credentials are looked at.
        let e = load(&MapEnv::new([(vars::RUN_INITIALIZATION_POLICY, p)])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn private_vcs_mappings_are_paired_and_validated() {
        let c = with(&[
            ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_1", "gitlab-pool"),
            (
                "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_1",
                "https://gitlab.internal:8443",
            ),
            ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_0", "github-pool"),
            (
                "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0",
                "http://ghe.internal",
            ),
        ])
        .unwrap();
        assert_eq!(
            c.settings.private_vcs_mappings,
            [
                PrivateVcsMapping {
                    name: "github-pool".into(),
                    base_endpoint: "http://ghe.internal".into(),
                },
                PrivateVcsMapping {
                    name: "gitlab-pool".into(),
                    base_endpoint: "https://gitlab.internal:8443".into(),
                },
            ]
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert!(with(&[]).unwrap().settings.private_vcs_mappings.is_empty());

        assert_eq!(
            err(&[("SPACELIFT_PRIVATEVCS_MAPPING_NAME_0", "pool")]),
            "SPACELIFT_PRIVATEVCS_MAPPING_NAME_0: is set but \
             SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0 is not"
        );
        assert_eq!(
            err(&[(
                "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_3",
                "https://vcs"
            )]),
            "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_3: is set but \
             SPACELIFT_PRIVATEVCS_MAPPING_NAME_3 is not"
        );
        assert_eq!(
            err(&[
                ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_0", "pool"),
                (
                    "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0",
                    "vcs.internal:443"
                ),
            ]),
            "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0: expected a URL with a scheme, \
             such as https://vcs.example.com, got \"vcs.internal:443\""
        );
        let e = err(&[
            ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_0", "pool"),
            (
                "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0",
                "user:t0ken@vcs",
            ),
        ]);
        assert!(e.starts_with("SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0: expected a URL"));
        assert!(!e.contains("t0ken"), "{e}");
        assert_eq!(
            err(&[("SPACELIFT_PRIVATEVCS_MAPPING_NAME_x", "pool")]),
            "SPACELIFT_PRIVATEVCS_MAPPING_NAME_x: the suffix must be a number: _0, _1, ... \
             (one per VCS-agent pool)"
        );
        // An empty value counts as unset.
        assert!(with(&[
            ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_0", ""),
            ("SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0", " "),
        ])
        .unwrap()
        .settings
        .private_vcs_mappings
        .is_empty());
        // A gap is renumbered, with a warning.
        let c = with(&[
            ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_2", "pool"),
            (
                "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_2",
                "https://vcs",
            ),
        ])
        .unwrap();
        assert_eq!(c.settings.private_vcs_mappings.len(), 1);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("as _0"), "{:?}", c.warnings);
    }

    /// Found by fuzz/ (config): with a leading zero the error named `..._NAME_8`, a
    /// variable nobody set, instead of `..._NAME_08`.
    #[test]
    fn private_vcs_errors_name_the_variable_as_spelled() {
        assert_eq!(
            err(&[("SPACELIFT_PRIVATEVCS_MAPPING_NAME_08", "pool")]),
            "SPACELIFT_PRIVATEVCS_MAPPING_NAME_08: is set but \
             SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_08 is not"
        );
        let e = err(&[
            ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_01", "pool"),
            ("SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_1", "vcs"),
        ]);
        assert!(
            e.starts_with("SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_1: expected a URL"),
            "{e}"
        );
    }

    #[test]
    fn additional_root_cas() {
        let pool = TestPool::new();
        let pem = &pool.pki.ca_cert_pem;
        let json = format!(r#"{{"caCertificates":["{}"]}}"#, b64(pem));
        let c = with(&[(vars::ADDITIONAL_ROOT_CAS, &b64(&json))]).unwrap();
        assert_eq!(c.additional_root_cas.len(), 1);
        let e = err(&[(vars::ADDITIONAL_ROOT_CAS, "a*b")]);
        assert_eq!(
            e,
            "ADDITIONAL_ROOT_CAS: unable to base64 decode: illegal base64 data at input byte 1"
        );
        let e = err(&[(
            vars::ADDITIONAL_ROOT_CAS,
            &b64(r#"{"caCertificates":["bm90IHBlbQ=="]}"#),
        )]);
        assert_eq!(
            e,
            "ADDITIONAL_ROOT_CAS: caCertificates[0] holds no PEM certificate"
        );
        let e = err(&[(vars::ADDITIONAL_ROOT_CAS, &b64("[1]"))]);
        assert!(
            e.starts_with("ADDITIONAL_ROOT_CAS: expected base64 of {\"caCertificates\""),
            "{e}"
        );
    }

    #[test]
    fn credentials_errors_surface() {
        let e = err(&[(vars::TOKEN, "bad*token")]);
        assert_eq!(
            e,
            "SPACELIFT_TOKEN: unable to base64 decode: illegal base64 data at input byte 3"
        );
    }

    #[test]
    fn debug_redacts_secrets() {
        let (mut env, pool) = base();
        env.set(vars::WHITELIST_ENVS, "AWS_SECRET")
            .set("AWS_SECRET", "wJalrXUtnFEMI-secret")
            .set(vars::MASK_ENVS, "AWS_SECRET")
            .set("HTTPS_PROXY", "http://bob:pr0xy-pass@proxy.local:3128");
        let c = load(&env).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("wJalrXUtnFEMI-secret"), "{dbg}");
        assert!(!dbg.contains("pr0xy-pass"), "{dbg}");
        assert!(!dbg.contains("bob"), "{dbg}");
        for line in pool.key_pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!dbg.contains(line), "{dbg}");
        }
        assert!(dbg.contains("AWS_SECRET"), "{dbg}");
        assert!(dbg.contains("proxy.local"), "{dbg}");
    }

    #[test]
    fn debug_redacts_private_vcs_credentials() {
        let c = with(&[
            ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_0", "ghe-pool"),
            (
                "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0",
                "https://vcs-user:vcs-pa55word@ghe.internal:8443/api",
            ),
        ])
        .unwrap();
        for dbg in [format!("{c:?}"), format!("{:?}", c.settings)] {
            assert!(!dbg.contains("vcs-pa55word"), "{dbg}");
            assert!(!dbg.contains("vcs-user"), "{dbg}");
            assert!(dbg.contains("ghe.internal:8443"), "{dbg}");
            assert!(dbg.contains("ghe-pool"), "{dbg}");
        }
    }

    #[test]
    fn help_lists_every_variable() {
        for v in [
            vars::TOKEN,
            vars::POOL_PRIVATE_KEY,
            vars::MASK_ENVS,
            vars::SENSITIVE_OUTPUT_UPLOAD,
            vars::DEBUG,
            vars::RUN_LOGS_ON_STDOUT,
            vars::RUN_INITIALIZATION_POLICY,
            vars::LOGS_TIMEOUT,
            vars::RUN_TIMEOUT,
            vars::PREPARE_TIMEOUT,
            vars::RUN_OUTPUT_BUFFER_MIB,
            vars::DOCKER_CONFIG_DIR,
            vars::WHITELIST_ENVS,
            vars::EXTRA_MOUNTS,
            vars::RO_EXTRA_MOUNTS,
            vars::WO_EXTRA_MOUNTS,
            vars::NETWORK,
            vars::RUNTIME,
            vars::DEFAULT_RUNNER_IMAGE,
            vars::DEFAULT_ANSIBLE_RUNNER_IMAGE,
            vars::METADATA_PREFIX,
            vars::PRIVATEVCS_NAME_PREFIX,
            vars::PRIVATEVCS_ENDPOINT_PREFIX,
            vars::DOCKER_HOST,
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "NO_PROXY",
            vars::ADDITIONAL_ROOT_CAS,
            vars::CAPACITY,
            vars::STOP_GRACE,
            vars::DATA_DIR,
            vars::BINARY_CACHE_KEEP,
            vars::SEED,
            vars::METRICS_ADDR,
            vars::LOG_FORMAT,
        ] {
            assert!(ENV_HELP.contains(v), "{v} missing from ENV_HELP");
        }
    }
}
