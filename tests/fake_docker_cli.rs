//! The real `docker` CLI (28.x) against fake-docker over `DOCKER_HOST=unix://...`.
//! The CLI runs as a child process with its own environment, so nothing here mutates ours.

use std::path::PathBuf;
use std::process::Output;

use fake_docker::{Config, FakeDocker, FakeDockerHandle};

fn docker_cli() -> Option<PathBuf> {
    let fixed = PathBuf::from("/usr/local/bin/docker");
    if fixed.exists() {
        return Some(fixed);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join("docker"))
        .find(|p| p.exists())
}

struct Cli {
    bin: PathBuf,
    host: String,
    config_dir: tempfile::TempDir,
}

impl Cli {
    async fn run(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(&self.bin)
            .args(args)
            .env("DOCKER_HOST", &self.host)
            .env("DOCKER_CONFIG", self.config_dir.path())
            .env("DOCKER_CLI_HINTS", "false")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_API_VERSION")
            .output()
            .await
            .expect("run docker CLI")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn setup(config: Config) -> Option<(FakeDockerHandle, Cli)> {
    use protocol::test_support::{require_component, INSTALL_DEPS};
    let bin = docker_cli();
    if !require_component(bin.is_some(), "the docker CLI", INSTALL_DEPS) {
        return None;
    }
    let bin = bin?;
    let fd = FakeDocker::start(config).await.expect("start fake-docker");
    let cli = Cli {
        bin,
        host: fd.docker_host(),
        config_dir: tempfile::tempdir().expect("tempdir"),
    };
    Some((fd, cli))
}

#[tokio::test]
async fn version_info_pull_run() {
    let Some((fd, cli)) = setup(Config::default()).await else {
        return;
    };

    let out = cli.run(&["version"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Server: fake-docker"), "{stdout}");
    assert!(
        stdout.contains("API version:      1.53 (minimum version 1.24)"),
        "{stdout}"
    );

    let out = cli.run(&["info"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("Architecture: x86_64"),
        "{}",
        text(&out.stdout)
    );

    let out = cli.run(&["pull", "busybox"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Using default tag: latest"), "{stdout}");
    assert!(
        stdout.contains("Status: Downloaded newer image for busybox:latest"),
        "{stdout}"
    );
    assert!(
        stdout
            .trim_end()
            .ends_with("docker.io/library/busybox:latest"),
        "{stdout}"
    );

    let out = cli.run(&["run", "--rm", "busybox", "echo", "hi"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    assert!(fd.containers().is_empty(), "--rm removed the container");

    let out = cli
        .run(&["run", "--rm", "busybox", "sh", "-c", "exit 3"])
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

    // An image not present locally: the CLI gets 404 on create, pulls, and retries.
    let out = cli.run(&["run", "--rm", "alpine", "echo", "pulled"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "pulled\n");
    assert!(text(&out.stderr).contains("Unable to find image 'alpine:latest' locally"));
}

#[tokio::test]
async fn logs_inspect_ps_rm() {
    let Some((fd, cli)) = setup(Config {
        local_images: vec!["busybox".into()],
        ..Config::default()
    })
    .await
    else {
        return;
    };
    let out = cli
        .run(&[
            "run",
            "--name",
            "logged",
            "--label",
            "suite=cli",
            "busybox",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 4",
        ])
        .await;
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("out\n".to_string(), "err\n".to_string())
    );

    let out = cli.run(&["logs", "logged"]).await;
    assert!(out.status.success());
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("out\n".to_string(), "err\n".to_string())
    );

    let out = cli.run(&["inspect", "logged"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    assert_eq!(v[0]["State"]["ExitCode"], 4);
    assert_eq!(v[0]["Name"], "/logged");

    let out = cli
        .run(&[
            "ps",
            "-a",
            "--filter",
            "label=suite=cli",
            "--format",
            "{{.Names}} {{.Status}}",
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "logged Exited (4) Less than a second ago\n"
    );
    let out = cli
        .run(&["ps", "-a", "--filter", "label=suite=other", "-q"])
        .await;
    assert_eq!(text(&out.stdout), "");

    let out = cli
        .run(&["run", "-d", "--name", "sleeper", "busybox", "sleep", "1000"])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli.run(&["rm", "sleeper"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("container is running"),
        "{}",
        text(&out.stderr)
    );
    let out = cli.run(&["rm", "-f", "logged", "sleeper"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "logged\nsleeper\n");
    assert!(fd.containers().is_empty());

    let out = cli.run(&["inspect", "nothing"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("No such object: nothing"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn foreign_arch_and_old_api() {
    let Some((fd, cli)) = setup(Config {
        api_version: "1.41".into(),
        ..Config::default()
    })
    .await
    else {
        return;
    };
    fd.set_image_platforms("busybox-arm64", &["linux/arm64"])
        .expect("platforms");
    let out = cli
        .run(&[
            "version",
            "--format",
            "{{.Server.APIVersion}} {{.Client.APIVersion}}",
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "1.41 1.41\n",
        "the CLI negotiated down via /_ping"
    );
    let out = cli
        .run(&["run", "--rm", "busybox-arm64", "echo", "hi"])
        .await;
    assert_eq!(out.status.code(), Some(255));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("exec /bin/echo: exec format error"),
        "{stderr}"
    );
    assert!(
        stderr.contains("does not match the detected host platform"),
        "{stderr}"
    );
}
