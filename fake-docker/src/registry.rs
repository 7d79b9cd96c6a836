//! Image references, platforms, and the built-in fake registry that pulls resolve against.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Go's GOOS values: dockerd accepts any of them in `platform` (and then finds no image).
const GO_OSES: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
    "zos",
];

/// `os/arch[/variant]`, as in `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn linux(arch: &str) -> Self {
        let variant = match arch {
            "arm64" => Some("v8".to_string()),
            "arm" => Some("v7".to_string()),
            _ => None,
        };
        Self {
            os: "linux".into(),
            architecture: arch.into(),
            variant,
        }
    }

    /// Parses `os[/arch[/variant]]`; `None` for an empty string (= unset).
    pub fn parse(s: &str, host_arch: &str) -> Result<Option<Self>, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() > 3 {
            return Err(format!(
                "\"{s}\": cannot parse platform specifier: invalid argument"
            ));
        }
        let os = parts[0].to_ascii_lowercase();
        if !GO_OSES.contains(&os.as_str()) {
            return Err(format!(
                "\"{s}\": unknown operating system or architecture: invalid argument"
            ));
        }
        let arch = match parts.get(1).map(|a| a.to_ascii_lowercase()) {
            None => host_arch.to_string(),
            Some(a) if a == "x86_64" || a == "x86-64" => "amd64".into(),
            Some(a) if a == "aarch64" => "arm64".into(),
            Some(a) => a,
        };
        let mut p = Platform::linux(&arch);
        p.os = os;
        if let Some(v) = parts.get(2) {
            p.variant = Some((*v).to_string());
        }
        Ok(Some(p))
    }

    /// containerd's normalised form, as dockerd 20.10 prints it: `arm64`'s `v8` is implied.
    pub fn normalized(&self) -> String {
        match self.variant.as_deref() {
            Some(v) if !(self.architecture == "arm64" && v == "v8") => {
                format!("{}/{}/{v}", self.os, self.architecture)
            }
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }

    /// Platforms are compatible when OS and architecture agree (variants are advisory).
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os && self.architecture == other.architecture
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A normalised reference: `repo` is the familiar name (`alpine`, `org/app`,
/// `localhost:5000/x`) and `tag` a tag or a `sha256:` digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    pub repo: String,
    pub tag: String,
}

impl Reference {
    /// `alpine`, `library/alpine` and `docker.io/library/alpine` all give `alpine:latest`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().trim_end_matches(':');
        if s.is_empty() {
            return Err("invalid reference format".into());
        }
        let (name, tag) = if let Some((n, d)) = s.split_once('@') {
            (n, d.to_string())
        } else {
            let last_slash = s.rfind('/').map(|i| i + 1).unwrap_or(0);
            match s[last_slash..].rfind(':') {
                Some(i) => (&s[..last_slash + i], s[last_slash + i + 1..].to_string()),
                None => (s, "latest".to_string()),
            }
        };
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(c);
        if name.is_empty() || !name.chars().all(valid) || tag.is_empty() {
            return Err("invalid reference format".into());
        }
        let mut repo = name;
        for prefix in ["docker.io/", "index.docker.io/", "registry-1.docker.io/"] {
            if let Some(rest) = repo.strip_prefix(prefix) {
                repo = rest;
            }
        }
        let repo = repo.strip_prefix("library/").unwrap_or(repo);
        Ok(Self {
            repo: repo.to_string(),
            tag,
        })
    }

    /// With an explicit `tag` query parameter overriding any tag in the name.
    pub fn parse_with_tag(name: &str, tag: &str) -> Result<Self, String> {
        let mut r = Self::parse(name)?;
        if !tag.is_empty() {
            r.tag = tag.trim_start_matches(':').to_string();
        }
        Ok(r)
    }

    pub fn is_digest(&self) -> bool {
        self.tag.starts_with("sha256:")
    }

    /// The `docker.io/library/...` path shown in pull progress.
    pub fn remote_path(&self) -> String {
        if self.repo.contains('/') {
            self.repo.clone()
        } else {
            format!("library/{}", self.repo)
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_digest() {
            write!(f, "{}@{}", self.repo, self.tag)
        } else {
            write!(f, "{}:{}", self.repo, self.tag)
        }
    }
}

/// What the fake registry knows about one repository (or one `repo:tag`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteImage {
    /// The platforms the manifest list offers. Empty means "host platform only".
    #[serde(default)]
    pub platforms: Vec<Platform>,
    /// `false` makes pulls fail with "repository does not exist".
    #[serde(default = "yes")]
    pub exists: bool,
    #[serde(default)]
    pub config: ImageConfig,
}

fn yes() -> bool {
    true
}

impl Default for RemoteImage {
    fn default() -> Self {
        Self {
            platforms: Vec::new(),
            exists: true,
            config: ImageConfig::default(),
        }
    }
}

/// The image's runtime configuration (the part `create` merges in).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    pub working_dir: String,
    pub labels: BTreeMap<String, String>,
    /// The image's executables (absolute paths). Empty: every command exists. Otherwise
    /// starting a command that is neither listed nor bind-mounted fails as runc does.
    pub files: Vec<String>,
    /// User and group names the image's `/etc/passwd` and `/etc/group` hold besides
    /// `root`, which every image here has. A container whose `User` names another is
    /// refused at start, as dockerd does; numeric ids always resolve.
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

/// The fake registry: every name pulls (host platform) unless configured otherwise.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    /// Keyed by `repo:tag` or by bare `repo` (any tag).
    images: BTreeMap<String, RemoteImage>,
}

impl Registry {
    pub fn set(&mut self, name: &str, image: RemoteImage) -> Result<(), String> {
        let key = if name.contains(':') && !name.ends_with(':') {
            Reference::parse(name)?.to_string()
        } else {
            Reference::parse(name)?.repo
        };
        self.images.insert(key, image);
        Ok(())
    }

    pub fn lookup(&self, r: &Reference) -> RemoteImage {
        self.images
            .get(&r.to_string())
            .or_else(|| self.images.get(&r.repo))
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_references() {
        let r = Reference::parse("docker.io/library/alpine").unwrap();
        assert_eq!(r.to_string(), "alpine:latest");
        let r = Reference::parse_with_tag("docker.io/library/alpine", "3.19").unwrap();
        assert_eq!(r.to_string(), "alpine:3.19");
        let r = Reference::parse("localhost:5000/app").unwrap();
        assert_eq!(r.to_string(), "localhost:5000/app:latest");
        assert!(Reference::parse("UPPER").is_err());
        let p = Platform::parse("linux/arm64", "amd64").unwrap().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
    }
}
