//! Daemon configuration (also the `--config FILE` JSON format).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::behaviour::Rule;
use crate::registry::RemoteImage;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Daemon architecture, `amd64` or `arm64` (`/version` Arch; `/info` gives x86_64/aarch64).
    pub arch: String,
    /// Maximum API version; `/vX.YY` above it is rejected like dockerd does.
    pub api_version: String,
    pub min_api_version: String,
    /// Engine version reported by `/version` and `/info`.
    pub server_version: String,
    /// Seeds container IDs and names (image IDs derive from it and the image).
    pub seed: u64,
    /// Wall-clock time (RFC3339) at daemon start; later times add tokio's elapsed time.
    pub base_time: String,
    /// Images the fake registry knows specially (`repo` or `repo:tag` -> platforms/existence).
    pub images: BTreeMap<String, RemoteImage>,
    /// Images present locally at start, as if already pulled (host platform unless `images` says otherwise).
    pub local_images: Vec<String>,
    /// Behaviour rules, first match wins.
    pub rules: Vec<Rule>,
    /// Exit code of an exec-format-error container (runc >= 1.2 gives 255, older 1).
    pub exec_format_exit_code: i64,
    /// Request bodies above this are refused (400).
    pub max_body_bytes: usize,
    /// Socket path for `FakeDocker::start` (default: a fresh temp dir).
    pub socket: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            arch: "amd64".into(),
            api_version: "1.53".into(),
            min_api_version: "1.24".into(),
            server_version: "28.2.2".into(),
            seed: 0,
            base_time: "2024-01-01T00:00:00Z".into(),
            images: BTreeMap::new(),
            local_images: Vec::new(),
            rules: Vec::new(),
            exec_format_exit_code: 255,
            max_body_bytes: 16 * 1024 * 1024,
            socket: None,
        }
    }
}

impl Config {
    /// Dockerd 20.10 (API 1.41) worded several errors differently; mimic it at <= 1.41.
    pub fn legacy_messages(&self) -> bool {
        parse_version(&self.api_version).is_some_and(|v| v <= (1, 41))
    }

    pub fn base_time(&self) -> Result<OffsetDateTime, crate::Error> {
        OffsetDateTime::parse(
            &self.base_time,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| crate::Error::Config(format!("base_time {:?}: {e}", self.base_time)))
    }

    pub fn validate(&self) -> Result<(), crate::Error> {
        if !matches!(self.arch.as_str(), "amd64" | "arm64") {
            return Err(crate::Error::Config(format!(
                "arch must be amd64 or arm64, not {:?}",
                self.arch
            )));
        }
        for v in [&self.api_version, &self.min_api_version] {
            if parse_version(v).is_none() {
                return Err(crate::Error::Config(format!("bad API version {v:?}")));
            }
        }
        self.base_time()?;
        Ok(())
    }
}

/// `1.41` -> `(1, 41)`.
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// `/info` Architecture spelling.
pub fn uname_arch(arch: &str) -> &str {
    match arch {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        other => other,
    }
}
