//! Registry credentials from a Docker `config.json` (`SPACELIFT_DOCKER_CONFIG_DIR`): which
//! entry goes with an image's registry. Apart from `docker` because it reads a file and
//! decodes secrets, and needs no daemon.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use serde::Deserialize;

use crate::ports::{RegistryAuth, RuntimeError};
use crate::secret::SecretString;

/// The registry host of an image reference, as Docker normalises it ([`crate::image_ref`]:
/// `docker.io` for Docker Hub names such as `alpine` or `library/alpine`, and `Foo` in
/// `Foo/bar` is a host). `None` when Docker would refuse the reference: no credentials go
/// with a pull the daemon will refuse anyway.
pub fn registry_host(image: &str) -> Option<String> {
    crate::image_ref::parse(image)
        .ok()
        .map(|r| r.registry_host())
        // `a_b.c/x`: the first component names a registry but is no valid host name, so
        // Docker parses the whole as a path with no domain; no registry is ours to name.
        .filter(|host| !host.is_empty())
}

fn normalize_registry(server: &str) -> String {
    let s = server
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = s.split('/').next().unwrap_or(s).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" | "docker.io" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

// No `Debug` on these two: they hold registry passwords and tokens as read.
#[derive(Deserialize, Default)]
struct DockerConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuthEntry>,
}

#[derive(Deserialize, Default)]
struct DockerAuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// The credentials in `<dir>/config.json` for `image`'s registry: `auths[server].auth`
/// (base64 `user:password`), `username`/`password`, or `identitytoken`. Server keys match
/// by host (`https://index.docker.io/v1/`, `docker.io` and friends are one registry).
/// A missing file or entry is `Ok(None)`; an unreadable or malformed file is an error
/// (it never quotes the file's contents).
pub fn registry_auth_for(dir: &Path, image: &str) -> Result<Option<RegistryAuth>, RuntimeError> {
    let path = dir.join("config.json");
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(RuntimeError::Api(format!(
                "SPACELIFT_DOCKER_CONFIG_DIR: cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let config: DockerConfigFile = serde_json::from_slice(&text).map_err(|e| {
        RuntimeError::Api(format!(
            "SPACELIFT_DOCKER_CONFIG_DIR: {} is not a Docker config.json (line {} column {})",
            path.display(),
            e.line(),
            e.column()
        ))
    })?;
    let Some(want) = registry_host(image) else {
        return Ok(None);
    };
    let Some((server, entry)) = config
        .auths
        .iter()
        .find(|(server, _)| normalize_registry(server) == want)
    else {
        return Ok(None);
    };
    let mut auth = RegistryAuth {
        username: entry.username.clone().filter(|s| !s.is_empty()),
        password: entry
            .password
            .clone()
            .filter(|s| !s.is_empty())
            .map(SecretString::from),
        identity_token: entry
            .identitytoken
            .clone()
            .filter(|s| !s.is_empty())
            .map(SecretString::from),
        server: Some(server.clone()),
    };
    if let Some(encoded) = entry.auth.as_deref().filter(|s| !s.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                RuntimeError::Api(format!(
                    "SPACELIFT_DOCKER_CONFIG_DIR: auths[{server:?}].auth is not base64 of user:password"
                ))
            })?;
        let (user, pass) = decoded.split_once(':').ok_or_else(|| {
            RuntimeError::Api(format!(
                "SPACELIFT_DOCKER_CONFIG_DIR: auths[{server:?}].auth is not base64 of user:password"
            ))
        })?;
        auth.username = Some(user.to_string());
        auth.password = Some(pass.into());
    }
    if auth.username.is_none() && auth.password.is_none() && auth.identity_token.is_none() {
        return Ok(None);
    }
    Ok(Some(auth))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::ExposeSecret;

    #[test]
    fn registry_host_of_common_references() {
        let host = |s| registry_host(s).unwrap();
        assert_eq!(host("alpine"), "docker.io");
        assert_eq!(host("library/alpine"), "docker.io");
        assert_eq!(host("docker.io/library/alpine"), "docker.io");
        assert_eq!(
            host("public.ecr.aws/spacelift/runner-terraform"),
            "public.ecr.aws"
        );
        assert_eq!(host("localhost:5000/x"), "localhost:5000");
        assert_eq!(host("localhost/x"), "localhost");
    }

    /// Cases from distribution/reference's grammar: the first component names a registry
    /// iff it holds '.' or ':', is `localhost`, or has upper case; anything Docker would
    /// refuse to parse gets no credentials at all.
    #[test]
    fn registry_host_follows_docker_reference_grammar() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let host = |s: &str| registry_host(s);
        let cases: Vec<(String, Option<&str>)> = vec![
            ("localhost:5000/x".into(), Some("localhost:5000")),
            ("localhost/x".into(), Some("localhost")),
            ("localhost:5000/x:tag".into(), Some("localhost:5000")),
            ("Foo/bar".into(), Some("foo")),
            (
                "FOO.example.com:5000/a/b:TAG".into(),
                Some("foo.example.com:5000"),
            ),
            ("foo.com/bar".into(), Some("foo.com")),
            ("foo:5000/bar".into(), Some("foo:5000")),
            ("bar".into(), Some("docker.io")),
            ("bar:5000".into(), Some("docker.io")),
            ("localhost".into(), Some("docker.io")),
            ("library/bar".into(), Some("docker.io")),
            ("docker.io/bar".into(), Some("docker.io")),
            ("index.docker.io/bar".into(), Some("docker.io")),
            ("registry-1.docker.io/library/bar".into(), Some("docker.io")),
            ("[::1]:5000/x".into(), Some("[::1]:5000")),
            ("[::1]/x".into(), Some("[::1]")),
            (format!("bar@{digest}"), Some("docker.io")),
            (format!("foo.com/bar:1.0@{digest}"), Some("foo.com")),
            (format!("localhost/x@{digest}"), Some("localhost")),
            // Not references Docker accepts: no credentials for any host.
            ("Foo".into(), None),
            ("foo/Bar".into(), None),
            ("".into(), None),
            ("a//b".into(), None),
            ("foo.com/".into(), None),
            ("foo.com:port/x".into(), None),
            ("-a/b".into(), None),
            ("bar@sha256:short".into(), None),
            ("ab".repeat(32), None),
            // Found by fuzz/registry_ref: a registry-like first component that is not a
            // valid host name (underscores) leaves Docker with no domain at all.
            ("a.b.c__e/f:v1".into(), None),
        ];
        for (image, want) in cases {
            assert_eq!(host(&image).as_deref(), want, "{image:?}");
        }
    }

    #[test]
    fn docker_config_json_entries() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(registry_auth_for(dir.path(), "alpine").unwrap(), None);
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            dir.path().join("config.json"),
            format!(
                r#"{{"auths":{{
                    "https://index.docker.io/v1/":{{"auth":"{}"}},
                    "registry.example.com:5000":{{"identitytoken":"tok"}},
                    "https://ghcr.io":{{"username":"u","password":"p"}},
                    "broken.example":{{"auth":"{}"}}
                }},"credsStore":"desktop"}}"#,
                b64("alice:pw:with:colons"),
                b64("nocolon")
            ),
        )
        .unwrap();
        let hub = registry_auth_for(dir.path(), "alpine:3").unwrap().unwrap();
        assert_eq!(hub.username.as_deref(), Some("alice"));
        assert_eq!(
            hub.password.as_ref().map(|p| p.expose_secret()),
            Some("pw:with:colons")
        );
        assert_eq!(hub.server.as_deref(), Some("https://index.docker.io/v1/"));
        let r = registry_auth_for(dir.path(), "registry.example.com:5000/team/img")
            .unwrap()
            .unwrap();
        assert_eq!(
            r.identity_token.as_ref().map(|t| t.expose_secret()),
            Some("tok")
        );
        assert_eq!(r.username, None);
        let g = registry_auth_for(dir.path(), "ghcr.io/o/i")
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                g.username.as_deref(),
                g.password.as_ref().map(|p| p.expose_secret())
            ),
            (Some("u"), Some("p"))
        );
        assert_eq!(registry_auth_for(dir.path(), "quay.io/x/y").unwrap(), None);
        let e = registry_auth_for(dir.path(), "broken.example/x").unwrap_err();
        assert!(
            e.to_string().contains("is not base64 of user:password"),
            "{e}"
        );
        std::fs::write(dir.path().join("config.json"), "{ nope").unwrap();
        assert!(registry_auth_for(dir.path(), "alpine").is_err());
    }
}
