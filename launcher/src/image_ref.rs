//! Docker image references, parsed the way Docker parses them (the grammar and the
//! normalisation of distribution/reference), so that the registry we choose credentials
//! for is the registry the daemon will contact.
//!
//! Normalisation: the part before the first `/` names a registry iff it contains `.` or
//! `:`, is exactly `localhost`, or has an upper-case letter (repository paths are lower
//! case, so it cannot be one); otherwise the name is on Docker Hub (`docker.io`), and a
//! one-component Hub name gets `library/`. `index.docker.io` is Docker Hub's legacy name.

use std::sync::LazyLock;

use regex::Regex;

/// Docker Hub's canonical domain.
pub const DOCKER_HUB: &str = "docker.io";
/// Longest repository path Docker accepts (since distribution/reference v0.6.0 the domain
/// does not count).
const PATH_MAX: usize = 255;

/// A parsed, normalised reference (`docker.io/library/alpine:3@sha256:...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry as written (`docker.io` for Hub names).
    pub domain: String,
    /// The repository path (`library/alpine`).
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// Why a string is not an image reference Docker would accept. Carries no part of the
/// input (callers name the reference when they want to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("empty image reference")]
    Empty,
    #[error("a 64-hex-digit image ID is not a repository name")]
    Identifier,
    #[error("the repository name must be lower case")]
    UpperCase,
    #[error("the repository path is longer than {PATH_MAX} characters")]
    TooLong,
    #[error("invalid reference format")]
    Format,
    #[error("the digest is not a valid sha256, sha384 or sha512 digest")]
    Digest,
}

// The grammar, term by term (distribution/reference, regexp.go).
const ALPHANUMERIC: &str = "[a-z0-9]+";
const SEPARATOR: &str = "(?:[._]|__|[-]+)";
const DOMAIN_COMPONENT: &str = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
const OPTIONAL_PORT: &str = "(?::[0-9]+)?";
const IPV6: &str = r"\[(?:[a-fA-F0-9:]+)\]";
const TAG: &str = "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";
const DIGEST: &str = "[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9a-fA-F]{32,}";

fn domain_and_port() -> String {
    let domain_name = format!(r"{DOMAIN_COMPONENT}(?:\.{DOMAIN_COMPONENT})*");
    format!("(?:{domain_name}|{IPV6}){OPTIONAL_PORT}")
}

fn remote_name() -> String {
    let path_component = format!("{ALPHANUMERIC}(?:{SEPARATOR}{ALPHANUMERIC})*");
    format!("{path_component}(?:/{path_component})*")
}

/// `name[:tag][@digest]`, capturing the three.
static REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    let name = format!("(?:{}/)?{}", domain_and_port(), remote_name());
    Regex::new(&format!("^({name})(?::({TAG}))?(?:@({DIGEST}))?$")).expect("valid pattern")
});

/// A name split into domain and path.
static NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        "^(?:({})/)?({})$",
        domain_and_port(),
        remote_name()
    ))
    .expect("valid pattern")
});

static IDENTIFIER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new("^[a-f0-9]{64}$").expect("valid pattern"));

/// Splits off the registry as Docker does (`splitDockerDomain`).
fn split_domain(name: &str) -> (&str, String) {
    let Some((first, rest)) = name.split_once('/') else {
        return (DOCKER_HUB, format!("library/{name}"));
    };
    let (domain, remote) = if first == "localhost"
        || first.contains(['.', ':'])
        || first.chars().any(|c| c.is_ascii_uppercase())
    {
        (first, rest)
    } else {
        (DOCKER_HUB, name)
    };
    let domain = if domain == "index.docker.io" {
        DOCKER_HUB
    } else {
        domain
    };
    if domain == DOCKER_HUB && !remote.contains('/') {
        return (domain, format!("library/{remote}"));
    }
    (domain, remote.to_string())
}

/// Parses `s` as `docker pull` would (`ParseNormalizedNamed`).
pub fn parse(s: &str) -> Result<ImageRef, RefError> {
    if s.is_empty() {
        return Err(RefError::Empty);
    }
    if IDENTIFIER.is_match(s) {
        return Err(RefError::Identifier);
    }
    let (domain, remainder) = split_domain(s);
    let remote = remainder.split(':').next().unwrap_or(&remainder);
    if remote.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(RefError::UpperCase);
    }
    let full = format!("{domain}/{remainder}");
    let caps = REFERENCE.captures(&full).ok_or(RefError::Format)?;
    let name = caps.get(1).map_or("", |m| m.as_str());
    let parts = NAME.captures(name).ok_or(RefError::Format)?;
    let path = parts.get(2).map_or("", |m| m.as_str());
    if path.len() > PATH_MAX {
        return Err(RefError::TooLong);
    }
    let digest = caps.get(3).map(|m| m.as_str());
    if digest.is_some_and(|d| !valid_digest(d)) {
        return Err(RefError::Digest);
    }
    Ok(ImageRef {
        domain: parts.get(1).map_or("", |m| m.as_str()).to_string(),
        path: path.to_string(),
        tag: caps.get(2).map(|m| m.as_str().to_string()),
        digest: digest.map(str::to_string),
    })
}

/// As `digest.Parse` with the algorithms Docker registers: exactly the algorithm's
/// length of lower-case hex.
fn valid_digest(d: &str) -> bool {
    let Some((algorithm, hex)) = d.split_once(':') else {
        return false;
    };
    let len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The registry host to match credentials against: lower case (host names are case
/// insensitive), with Docker Hub's aliases folded into `docker.io`.
pub fn canonical_host(domain: &str) -> String {
    let host = domain.to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        _ => host,
    }
}

impl ImageRef {
    /// [`canonical_host`] of this reference's domain.
    pub fn registry_host(&self) -> String {
        canonical_host(&self.domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(domain: &str, path: &str, tag: Option<&str>, digest: Option<&str>) -> ImageRef {
        ImageRef {
            domain: domain.into(),
            path: path.into(),
            tag: tag.map(Into::into),
            digest: digest.map(Into::into),
        }
    }

    #[test]
    fn normalises_like_docker() {
        let dg = format!("sha256:{}", "0f".repeat(32));
        assert_eq!(
            parse("alpine"),
            Ok(r("docker.io", "library/alpine", None, None))
        );
        assert_eq!(
            parse("alpine:3.20"),
            Ok(r("docker.io", "library/alpine", Some("3.20"), None))
        );
        assert_eq!(
            parse("docker.io/alpine"),
            Ok(r("docker.io", "library/alpine", None, None))
        );
        assert_eq!(
            parse("index.docker.io/team/app"),
            Ok(r("docker.io", "team/app", None, None))
        );
        assert_eq!(
            parse("registry-1.docker.io/app"),
            Ok(r("registry-1.docker.io", "app", None, None))
        );
        assert_eq!(
            parse("Foo/bar"),
            Ok(r("Foo", "bar", None, None)),
            "upper case names a host"
        );
        assert_eq!(
            parse(&format!("localhost:5000/a/b-c__d.e:v1@{dg}")),
            Ok(r("localhost:5000", "a/b-c__d.e", Some("v1"), Some(&dg)))
        );
        assert_eq!(
            parse("[fe80::1]:5000/x"),
            Ok(r("[fe80::1]:5000", "x", None, None))
        );
        assert_eq!(parse("a---b/c"), Ok(r("docker.io", "a---b/c", None, None)));
    }

    #[test]
    fn refuses_what_docker_refuses() {
        let long = format!("example.com/{}", "a".repeat(256));
        for (s, e) in [
            ("", RefError::Empty),
            (&"ab".repeat(32)[..], RefError::Identifier),
            ("Alpine", RefError::UpperCase),
            ("team/App", RefError::UpperCase),
            (&long[..], RefError::TooLong),
            ("a_-b", RefError::Format),
            ("a___b", RefError::Format),
            ("a/", RefError::Format),
            ("example.com:x/y", RefError::Format),
            ("-foo.com/x", RefError::Format),
            ("x:.tag", RefError::Format),
            ("x@sha256:abc", RefError::Format),
            ("x y", RefError::Format),
            ("[fe80::1%eth0]/x", RefError::Format),
        ] {
            assert_eq!(parse(s), Err(e), "{s:?}");
        }
        let tag = "t".repeat(129);
        assert_eq!(parse(&format!("x:{tag}")), Err(RefError::Format));
    }

    /// Since distribution/reference v0.6.0 only the path counts towards the 255.
    #[test]
    fn only_the_path_is_limited_to_255_characters() {
        let domain = format!("{}.example.com", "d".repeat(60));
        let path = "a".repeat(250);
        let long_name = format!("{domain}/{path}");
        assert!(long_name.len() > 255);
        assert_eq!(
            parse(&long_name).map(|r| r.path.len()),
            Ok(250),
            "a long domain with a short path is fine"
        );
        assert_eq!(
            parse(&format!("example.com/{}", "a".repeat(256))),
            Err(RefError::TooLong)
        );
        // The normalised path (`library/...`) is what is measured.
        assert_eq!(parse(&"a".repeat(250)), Err(RefError::TooLong));
        assert!(parse(&"a".repeat(247)).is_ok());
    }

    /// Digests are checked like `digest.Parse`: a known algorithm and exactly its length of
    /// lower-case hex.
    #[test]
    fn digests_are_validated_like_docker() {
        let ok = [
            format!("sha256:{}", "0f".repeat(32)),
            format!("sha384:{}", "0f".repeat(48)),
            format!("sha512:{}", "0f".repeat(64)),
        ];
        for d in &ok {
            assert!(parse(&format!("x@{d}")).is_ok(), "{d}");
        }
        let bad = [
            format!("sha256:{}", "0f".repeat(16)),
            format!("sha256:{}", "0f".repeat(33)),
            format!("sha256:{}", "0F".repeat(32)),
            format!("md5:{}", "0f".repeat(16)),
            format!("sha512:{}", "0f".repeat(32)),
        ];
        for d in &bad {
            assert_eq!(parse(&format!("x@{d}")), Err(RefError::Digest), "{d}");
        }
    }

    #[test]
    fn hosts_fold_case_and_hub_aliases() {
        assert_eq!(canonical_host("FOO.example:5000"), "foo.example:5000");
        for hub in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert_eq!(canonical_host(hub), "docker.io");
        }
    }
}
