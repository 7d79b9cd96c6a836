//! Registry credentials from a Docker `config.json` (`SPACELIFT_DOCKER_CONFIG_DIR`): which
//! entry, or which credential helper, goes with an image's registry. Apart from `docker` because it reads a file and
//! decodes secrets, and needs no daemon.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use serde::Deserialize;

use crate::cred_helper::{self, HelperPath, DOCKER_HUB_SERVER};
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
    /// The helper for every registry without a `credHelpers` entry.
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    /// Registry -> helper name (`docker-credential-<name>`).
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
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

/// The server address the docker CLI looks a registry up by, in `credHelpers` and when
/// asking a helper: `https://index.docker.io/v1/` for Docker Hub, else the bare host.
fn cli_server_address(host: &str) -> String {
    if host == "docker.io" {
        DOCKER_HUB_SERVER.to_string()
    } else {
        host.to_string()
    }
}

/// The helper that holds `host`'s credentials, as the docker CLI picks it:
/// `credHelpers[<registry>]`, else `credsStore`, else none (`auths`). The CLI's key is
/// literal (`cli_server_address`); we also take a key naming the same host in another
/// spelling (`docker.io`, `https://ghcr.io`), as `auths` keys match, so every entry the
/// CLI honours we honour too. An empty `credHelpers` value means `auths`, as in the CLI.
fn helper_for<'c>(config: &'c DockerConfigFile, host: &str) -> Option<&'c str> {
    let literal = cli_server_address(host);
    let entry = config.cred_helpers.get(&literal).or_else(|| {
        config
            .cred_helpers
            .iter()
            .find(|(key, _)| normalize_registry(key) == host)
            .map(|(_, name)| name)
    });
    match entry {
        Some(name) => Some(name.as_str()).filter(|n| !n.is_empty()),
        None => config.creds_store.as_deref().filter(|n| !n.is_empty()),
    }
}

/// The credentials for `image`'s registry from `<dir>/config.json`: through its credential
/// helper when `credHelpers` or `credsStore` names one ([`crate::cred_helper`], looked up
/// in `helpers`), else `auths[server].auth` (base64 `user:password`), `username`/`password`,
/// or `identitytoken`. `auths` keys match by host (`https://index.docker.io/v1/`,
/// `docker.io` and friends are one registry). A missing file or entry, or a helper with
/// nothing for the registry, is `Ok(None)` (an anonymous pull). An unreadable or
/// malformed file, or a missing, failing or hung helper, is an error naming what failed;
/// it never quotes the file's contents nor the helper's output.
pub async fn registry_auth_for(
    dir: &Path,
    image: &str,
    helpers: &HelperPath,
) -> Result<Option<RegistryAuth>, RuntimeError> {
    let Some(config) = read_config(dir)? else {
        return Ok(None);
    };
    let Some(want) = registry_host(image) else {
        return Ok(None);
    };
    match helper_for(&config, &want) {
        Some(name) => cred_helper::get(name, &cli_server_address(&want), helpers)
            .await
            .map_err(|e| RuntimeError::Api(format!("SPACELIFT_DOCKER_CONFIG_DIR: {e}"))),
        None => from_auths(&config, &want),
    }
}

fn read_config(dir: &Path) -> Result<Option<DockerConfigFile>, RuntimeError> {
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
    serde_json::from_slice(&text).map(Some).map_err(|e| {
        RuntimeError::Api(format!(
            "SPACELIFT_DOCKER_CONFIG_DIR: {} is not a Docker config.json (line {} column {})",
            path.display(),
            e.line(),
            e.column()
        ))
    })
}

fn from_auths(config: &DockerConfigFile, want: &str) -> Result<Option<RegistryAuth>, RuntimeError> {
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

    /// `auths` only: no helper on the (empty) helper path is ever asked.
    #[tokio::test]
    async fn docker_config_json_entries() {
        let dir = tempfile::tempdir().unwrap();
        let no_helpers = HelperPath::dirs(dir.path());
        let auth_for = |image: &'static str| {
            let dir = dir.path().to_path_buf();
            let no_helpers = no_helpers.clone();
            async move { registry_auth_for(&dir, image, &no_helpers).await }
        };
        assert_eq!(auth_for("alpine").await.unwrap(), None);
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            dir.path().join("config.json"),
            format!(
                r#"{{"auths":{{
                    "https://index.docker.io/v1/":{{"auth":"{}"}},
                    "registry.example.com:5000":{{"identitytoken":"tok"}},
                    "https://ghcr.io":{{"username":"u","password":"p"}},
                    "broken.example":{{"auth":"{}"}}
                }}}}"#,
                b64("alice:pw:with:colons"),
                b64("nocolon")
            ),
        )
        .unwrap();
        let hub = auth_for("alpine:3").await.unwrap().unwrap();
        assert_eq!(hub.username.as_deref(), Some("alice"));
        assert_eq!(
            hub.password.as_ref().map(|p| p.expose_secret()),
            Some("pw:with:colons")
        );
        assert_eq!(hub.server.as_deref(), Some("https://index.docker.io/v1/"));
        let r = auth_for("registry.example.com:5000/team/img")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            r.identity_token.as_ref().map(|t| t.expose_secret()),
            Some("tok")
        );
        assert_eq!(r.username, None);
        let g = auth_for("ghcr.io/o/i").await.unwrap().unwrap();
        assert_eq!(
            (
                g.username.as_deref(),
                g.password.as_ref().map(|p| p.expose_secret())
            ),
            (Some("u"), Some("p"))
        );
        assert_eq!(auth_for("quay.io/x/y").await.unwrap(), None);
        let e = auth_for("broken.example/x").await.unwrap_err();
        assert!(
            e.to_string().contains("is not base64 of user:password"),
            "{e}"
        );
        std::fs::write(dir.path().join("config.json"), "{ nope").unwrap();
        assert!(auth_for("alpine").await.is_err());
    }

    /// Helpers from `credHelpers` and `credsStore`, chosen as the docker CLI does.
    #[tokio::test]
    async fn cred_helpers_then_creds_store_then_auths() {
        let helpers = tempfile::tempdir().unwrap();
        // Each helper names itself and the server address it was given on stdin.
        for name in ["ecr", "gh", "store"] {
            crate::cred_helper::write_test_helper(
                helpers.path(),
                name,
                &format!(
                    r#"server=$(cat); printf '{{"Username":"{name}|%s","Secret":"pw-{name}"}}' "$server""#
                ),
            );
        }
        let path = HelperPath::dirs(helpers.path());
        let dir = tempfile::tempdir().unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            dir.path().join("config.json"),
            format!(
                r#"{{"auths":{{"ghcr.io":{{"auth":"{}"}},"quay.io":{{"auth":"{}"}}}},
                    "credsStore":"store",
                    "credHelpers":{{
                        "123.dkr.ecr.eu-west-1.amazonaws.com":"ecr",
                        "https://ghcr.io":"gh",
                        "quay.io":""
                    }}}}"#,
                b64("file:ghcr"),
                b64("file:quay")
            ),
        )
        .unwrap();
        let who = |image: &'static str| {
            let dir = dir.path().to_path_buf();
            let path = path.clone();
            async move {
                let a = registry_auth_for(&dir, image, &path)
                    .await
                    .unwrap()
                    .unwrap();
                (
                    a.username.unwrap(),
                    a.password.unwrap().expose_secret().to_string(),
                    a.server.unwrap(),
                )
            }
        };
        let ecr = "123.dkr.ecr.eu-west-1.amazonaws.com";
        assert_eq!(
            who("123.dkr.ecr.eu-west-1.amazonaws.com/team/app:1").await,
            (format!("ecr|{ecr}"), "pw-ecr".into(), ecr.into())
        );
        // credHelpers wins over auths; its key matches by host like auths keys.
        assert_eq!(
            who("ghcr.io/o/i").await,
            ("gh|ghcr.io".into(), "pw-gh".into(), "ghcr.io".into())
        );
        // An empty credHelpers entry means auths, as in the docker CLI.
        assert_eq!(
            who("quay.io/o/i").await,
            ("file".into(), "quay".into(), "quay.io".into())
        );
        // Everything else goes to credsStore; Docker Hub by the CLI's server address.
        assert_eq!(
            who("alpine:3").await,
            (
                "store|https://index.docker.io/v1/".into(),
                "pw-store".into(),
                "https://index.docker.io/v1/".into()
            )
        );
        assert_eq!(
            who("registry.example.com:5000/x").await,
            (
                "store|registry.example.com:5000".into(),
                "pw-store".into(),
                "registry.example.com:5000".into()
            )
        );
    }

    #[tokio::test]
    async fn a_missing_helper_fails_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"credHelpers":{"1.dkr.ecr.us-east-1.amazonaws.com":"ecr-login"}}"#,
        )
        .unwrap();
        let empty = tempfile::tempdir().unwrap();
        let e = registry_auth_for(
            dir.path(),
            "1.dkr.ecr.us-east-1.amazonaws.com/app",
            &HelperPath::dirs(empty.path()),
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "docker: SPACELIFT_DOCKER_CONFIG_DIR: docker-credential-ecr-login not found on \
             PATH (needed for 1.dkr.ecr.us-east-1.amazonaws.com)"
        );
    }
}
