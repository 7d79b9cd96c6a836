//! Environment -> validated [`LauncherConfig`] (ripgrep's "low-level args -> HiArgs").
//!
//! Everything is read through an [`EnvSource`] (linkerd's env-config model), so tests pass a
//! map instead of touching the process environment. Every variable documented for
//! Spacelift's Docker launcher (research/spacelift.md section 4) is honoured with its
//! documented meaning and default, plus our own `SPACELIFT_LAUNCHER_*` knobs; [`vars::ALL`]
//! lists them all. A bad value gets an error naming the variable and what was expected;
//! secrets are never quoted.
//!
//! Two steps: [`load_with`] validates (pure: environment in, configuration out, no file
//! read); [`LauncherConfig::prepare`] then acts on it (reads and compiles the
//! initialization policy, looks for the Docker config.json).
//!
//! Conventions:
//! - An empty (or all-whitespace) value counts as unset, for every optional variable.
//! - Booleans accept Go's `strconv.ParseBool` spellings: `1 t T TRUE true True` and
//!   `0 f F FALSE false False`.
//! - Durations are Go durations ([`protocol::duration`]): `7m`, `1h30m`, `90s`, `1.5h`,
//!   `500ms` (units ns, us, µs, ms, s, m, h), positive and at most Go's maximum,
//!   2562047h47m16.854775807s.

mod load;
mod parse;
mod prepare;
pub mod vars;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use rustls_pki_types::CertificateDer;
use thiserror::Error;

use crate::credentials::{Credentials, CredentialsError};
use crate::settings::Settings;

pub use load::{load, load_with};
pub use parse::{parse_additional_root_cas, parse_bool};

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
    /// Text when standard error is a terminal, JSON lines otherwise.
    #[default]
    Auto,
    Text,
    Json,
}

impl LogFormat {
    /// `auto`, `text` or `json`, in any case.
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Some(LogFormat::Auto),
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
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
    /// `SPACELIFT_LAUNCHER_LOG_FORMAT` (`auto` | `text` | `json`; default `auto`).
    pub log_format: LogFormat,
    pub proxy: ProxyConfig,
    /// `ADDITIONAL_ROOT_CAS`, parsed: trusted for the backend's HTTPS and MQTT servers, on
    /// top of the system roots and the token's `ca_certificate`.
    pub additional_root_cas: Vec<CertificateDer<'static>>,
    /// `SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY`: the policy file
    /// [`LauncherConfig::prepare`] compiles into `settings.init_policy`.
    pub init_policy_path: Option<PathBuf>,
    /// `SPACELIFT_LAUNCHER_INTERRUPTION_{WATCH,POLL_INTERVAL,METADATA_URL}`; None: off.
    pub interruption: Option<crate::interruption::WatchConfig>,
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
            .field("init_policy_path", &self.init_policy_path)
            .field("interruption", &self.interruption)
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

/// The `ENVIRONMENT` section of `--help`: every variable of [`vars::ALL`] with its meaning
/// and default.
pub fn env_help() -> &'static str {
    static HELP: OnceLock<String> = OnceLock::new();
    HELP.get_or_init(vars::render_help)
}

/// An environment holding valid credentials, for the tests of each step.
#[cfg(test)]
mod test_env {
    use super::*;
    use crate::credentials::testing::{b64, TestPool};

    pub(super) fn base() -> (MapEnv, TestPool) {
        let pool = TestPool::new();
        let env = MapEnv::new([
            (
                vars::TOKEN.name,
                pool.token("mqtts://127.0.0.1:8883", "https://127.0.0.1:8443"),
            ),
            (vars::POOL_PRIVATE_KEY.name, b64(&pool.key_pem)),
        ]);
        (env, pool)
    }

    pub(super) fn with(pairs: &[(&str, &str)]) -> Result<LauncherConfig, ConfigError> {
        let (mut env, _pool) = base();
        for (k, v) in pairs {
            env.set(*k, *v);
        }
        load(&env)
    }

    pub(super) fn err(pairs: &[(&str, &str)]) -> String {
        with(pairs).unwrap_err().to_string()
    }
}
