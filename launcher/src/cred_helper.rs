//! The docker-credential helper protocol, `get` only: `docker-credential-<name> get` with
//! the registry's server address on stdin answers `{"ServerURL","Username","Secret"}` on
//! stdout, as the docker CLI (and docker-credential-helpers' client) use it. This is how
//! `credsStore` and `credHelpers` in a Docker `config.json` reach ECR, GCR or ACR.
//!
//! The helper's stdout carries the secret, and on failure its stdout and stderr may echo
//! tokens or keychain contents: neither is ever logged or put in an error. Errors name the
//! helper, the registry and the exit status only. Its stderr is piped and dropped, so it
//! cannot reach the launcher's own log either.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ports::RegistryAuth;
use crate::secret::SecretString;

/// How long a helper may take. The docker CLI waits forever; we cannot let a hung helper
/// (`pass` waiting for a pinentry nobody sees) hold a run. 30 s because the slow real ones
/// make network calls before answering: ecr-login calls ECR's GetAuthorizationToken with
/// the AWS SDK's retries, docker-credential-gcloud starts the Python gcloud CLI, and both
/// take seconds when cold.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// The server address the docker CLI gives helpers for Docker Hub.
pub const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";
/// What a helper prints (on stdout, exiting non-zero) when it holds nothing for a registry;
/// the CLI then pulls anonymously.
const NOT_FOUND: &str = "credentials not found in native keychain";
/// A helper's `Username` meaning its `Secret` is an identity (refresh) token.
const TOKEN_USERNAME: &str = "<token>";
/// Credentials JSON is a few KiB (an ECR token is ~2 KiB); this bounds a runaway helper.
const MAX_OUTPUT: u64 = 1024 * 1024;

/// Where helpers are looked up and how long they may take. `Default` is the launcher's
/// own `PATH` (read at each lookup) and [`HELPER_TIMEOUT`]; tests give their own dirs so
/// they never touch the process's environment.
#[derive(Debug, Clone)]
pub struct HelperPath {
    dirs: Option<OsString>,
    timeout: Duration,
}

impl Default for HelperPath {
    fn default() -> HelperPath {
        HelperPath {
            dirs: None,
            timeout: HELPER_TIMEOUT,
        }
    }
}

impl HelperPath {
    /// A `PATH`-style list of directories (`a:b:c`) instead of the process's `PATH`.
    pub fn dirs(dirs: impl Into<OsString>) -> HelperPath {
        HelperPath {
            dirs: Some(dirs.into()),
            ..HelperPath::default()
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> HelperPath {
        self.timeout = timeout;
        self
    }

    /// The executable `program` in the first directory that has one, as a shell would.
    /// Empty and relative entries are skipped: a helper is never taken from the
    /// launcher's working directory.
    fn find(&self, program: &str) -> Option<PathBuf> {
        let dirs = match &self.dirs {
            Some(d) => d.clone(),
            None => std::env::var_os("PATH").unwrap_or_default(),
        };
        std::env::split_paths(&dirs)
            .filter(|d| d.is_absolute())
            .map(|d| d.join(program))
            .find(|p| is_executable(p))
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Why a helper gave no credentials. None of these carries the helper's output.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HelperError {
    #[error("credential helper name {name:?} is not a program name (it must not contain '/')")]
    BadName { name: String },
    #[error("{program} not found on PATH (needed for {server})")]
    NotFound { program: String, server: String },
    #[error("{program} could not be started for {server}: {reason}")]
    Spawn {
        program: String,
        server: String,
        reason: String,
    },
    #[error("{program} get for {server} did not answer within {}s and was killed", timeout.as_secs_f64())]
    Timeout {
        program: String,
        server: String,
        timeout: Duration,
    },
    #[error("{program} get for {server} failed ({status}); its output is not shown as it may hold secrets")]
    Failed {
        program: String,
        server: String,
        status: String,
    },
    #[error("{program} get for {server} answered something that is not credentials JSON (line {line} column {column})")]
    Malformed {
        program: String,
        server: String,
        line: usize,
        column: usize,
    },
}

// No `Debug`: `secret` is the registry password or token.
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Asks helper `name` (`docker-credential-<name>`) for `server`'s credentials. `Ok(None)`
/// when it has none (its "credentials not found" answer, or empty credentials): the pull
/// goes anonymously, as with the docker CLI. The credentials' `server` is the address we
/// asked for, as the CLI sets it, whatever `ServerURL` the helper echoes.
pub async fn get(
    name: &str,
    server: &str,
    path: &HelperPath,
) -> Result<Option<RegistryAuth>, HelperError> {
    if name.is_empty() || name.contains('/') {
        return Err(HelperError::BadName { name: name.into() });
    }
    let program = format!("docker-credential-{name}");
    let Some(exe) = path.find(&program) else {
        return Err(HelperError::NotFound {
            program,
            server: server.into(),
        });
    };
    let mut child = spawn(&exe).await.map_err(|e| HelperError::Spawn {
        program: program.clone(),
        server: server.into(),
        reason: e.kind().to_string(),
    })?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        unreachable!("all three streams are piped");
    };
    let exchange = async {
        // A helper that exits without reading its stdin is not our error.
        let _ = stdin.write_all(server.as_bytes()).await;
        drop(stdin);
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (mut stdout, mut stderr) = (stdout.take(MAX_OUTPUT), stderr.take(MAX_OUTPUT));
        let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        (child.wait().await, out, err)
    };
    let (status, out, err) = match tokio::time::timeout(path.timeout, exchange).await {
        Ok(done) => done,
        Err(_) => {
            let _ = child.kill().await;
            return Err(HelperError::Timeout {
                program,
                server: server.into(),
                timeout: path.timeout,
            });
        }
    };
    let out = SecretString::from(into_text(out));
    let status = status.map_err(|e| HelperError::Spawn {
        program: program.clone(),
        server: server.into(),
        reason: e.kind().to_string(),
    })?;
    if !status.success() {
        use crate::secret::ExposeSecret;
        // The CLI looks for the message on stdout, where docker-credential-helpers print
        // it; some helpers print it on stderr. Compared whole, never quoted.
        let not_found = |s: &str| s.trim() == NOT_FOUND;
        if not_found(out.expose_secret()) || not_found(&String::from_utf8_lossy(&err)) {
            return Ok(None);
        }
        return Err(HelperError::Failed {
            program,
            server: server.into(),
            status: status.to_string(),
        });
    }
    parse_answer(&out, &program, server)
}

/// Starts `exe get`. "Text file busy" is retried a few times: the file is being replaced
/// (a package upgrade), or another thread's fork still holds it open for writing for the
/// instant before that child's exec (a helper script a test has just written).
async fn spawn(exe: &Path) -> std::io::Result<tokio::process::Child> {
    let mut attempt = 1;
    loop {
        let started = tokio::process::Command::new(exe)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        match started {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempt < 5 => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The helper's stdout as text, moved, not copied, when it is UTF-8 (JSON always is).
fn into_text(out: Vec<u8>) -> String {
    use secrecy::zeroize::Zeroize;
    String::from_utf8(out).unwrap_or_else(|e| {
        let mut bytes = e.into_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        bytes.zeroize();
        text
    })
}

fn parse_answer(
    out: &SecretString,
    program: &str,
    server: &str,
) -> Result<Option<RegistryAuth>, HelperError> {
    use crate::secret::ExposeSecret;
    // serde_json's messages may quote the input; only the position goes into the error.
    let answer: HelperAnswer =
        serde_json::from_str(out.expose_secret()).map_err(|e| HelperError::Malformed {
            program: program.into(),
            server: server.into(),
            line: e.line(),
            column: e.column(),
        })?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    let secret = SecretString::from(answer.secret);
    let mut auth = RegistryAuth {
        server: Some(server.into()),
        ..RegistryAuth::default()
    };
    if answer.username == TOKEN_USERNAME {
        auth.identity_token = Some(secret);
    } else {
        auth.username = Some(answer.username).filter(|u| !u.is_empty());
        auth.password = Some(secret);
    }
    Ok(Some(auth))
}

/// Writes `docker-credential-<name>` (a `/bin/sh` script) into `dir`, for tests that put
/// their own helpers on a [`HelperPath`].
#[cfg(test)]
pub(crate) fn write_test_helper(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::ExposeSecret;

    fn helpers(scripts: &[(&str, &str)]) -> (tempfile::TempDir, HelperPath) {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in scripts {
            write_test_helper(dir.path(), name, body);
        }
        let path = HelperPath::dirs(dir.path());
        (dir, path)
    }

    /// Echoes the server address it was given on stdin in the username, so tests see what
    /// it was asked.
    const ECHO: &str = r#"server=$(cat)
[ "$1" = get ] || exit 2
printf '{"ServerURL":"%s","Username":"user@%s","Secret":"s3cret-pw"}' "$server" "$server""#;

    #[tokio::test]
    async fn answers_username_and_secret_for_the_server_on_stdin() {
        let (_d, path) = helpers(&[("echo", ECHO)]);
        let auth = get("echo", "registry.example.com", &path)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(auth.username.as_deref(), Some("user@registry.example.com"));
        assert_eq!(
            auth.password.as_ref().map(|p| p.expose_secret()),
            Some("s3cret-pw")
        );
        assert!(auth.identity_token.is_none());
        assert_eq!(auth.server.as_deref(), Some("registry.example.com"));
    }

    #[tokio::test]
    async fn token_username_means_identity_token() {
        let (_d, path) = helpers(&[(
            "tok",
            r#"cat >/dev/null; echo '{"ServerURL":"x","Username":"<token>","Secret":"refresh-t0ken"}'"#,
        )]);
        let auth = get("tok", "x.example", &path).await.unwrap().unwrap();
        assert_eq!(auth.username, None);
        assert!(auth.password.is_none());
        assert_eq!(
            auth.identity_token.as_ref().map(|t| t.expose_secret()),
            Some("refresh-t0ken")
        );
    }

    #[tokio::test]
    async fn credentials_not_found_is_anonymous() {
        let (_d, path) = helpers(&[
            (
                "stdout",
                "cat >/dev/null; echo 'credentials not found in native keychain'; exit 1",
            ),
            (
                "stderr",
                "cat >/dev/null; echo 'credentials not found in native keychain' >&2; exit 1",
            ),
        ]);
        assert_eq!(get("stdout", "a.example", &path).await.unwrap(), None);
        assert_eq!(get("stderr", "a.example", &path).await.unwrap(), None);
    }

    #[tokio::test]
    async fn missing_helper_is_named() {
        let (_d, path) = helpers(&[]);
        let e = get("ecr-login", "1.dkr.ecr.eu-west-1.amazonaws.com", &path)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "docker-credential-ecr-login not found on PATH (needed for \
             1.dkr.ecr.eu-west-1.amazonaws.com)"
        );
        // Not executable: not a helper either.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("docker-credential-plain"), "#!/bin/sh\n").unwrap();
        let e = get("plain", "a.example", &HelperPath::dirs(dir.path()))
            .await
            .unwrap_err();
        assert!(matches!(e, HelperError::NotFound { .. }), "{e}");
        let e = get("../../bin/sh", "a.example", &path).await.unwrap_err();
        assert!(matches!(e, HelperError::BadName { .. }), "{e}");
    }

    #[tokio::test]
    async fn failing_helper_error_names_it_and_never_quotes_its_output() {
        let (_d, path) = helpers(&[
            (
                "fail",
                "cat >/dev/null; echo 'token=SUPERSECRET-stderr' >&2; \
                 echo 'SUPERSECRET-stdout'; exit 1",
            ),
            (
                "garbage",
                r#"cat >/dev/null; echo '{"Username":"u","Secret":SUPERSECRET-json}'"#,
            ),
        ]);
        let e = get("fail", "registry.example.com", &path)
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("docker-credential-fail get for registry.example.com failed")
                && text.contains("exit status: 1"),
            "{text}"
        );
        let e2 = get("garbage", "registry.example.com", &path)
            .await
            .unwrap_err();
        assert!(matches!(e2, HelperError::Malformed { .. }), "{e2}");
        for shown in [text, format!("{e:?}"), e2.to_string(), format!("{e2:?}")] {
            assert!(!shown.contains("SUPERSECRET"), "{shown}");
        }
    }

    /// A hung helper is killed after the timeout. Real time: the helper is a subprocess,
    /// which tokio's paused clock cannot drive; the test waits 200 ms, not the 30 s sleep.
    #[tokio::test]
    async fn hung_helper_times_out_and_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        write_test_helper(
            dir.path(),
            "hang",
            &format!("echo $$ > '{}'; exec sleep 30", pid_file.display()),
        );
        let path = HelperPath::dirs(dir.path()).with_timeout(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let e = get("hang", "a.example", &path).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "{e}");
        assert_eq!(
            e.to_string(),
            "docker-credential-hang get for a.example did not answer within 0.2s and was killed"
        );
        // Killed and reaped: its pid is gone (tokio's kill waits for the exit).
        // (No pid file: killed before its first line ran, on a loaded machine.)
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            assert!(
                !Path::new(&format!("/proc/{}", pid.trim())).exists(),
                "helper {pid} still running"
            );
        }
    }
}
