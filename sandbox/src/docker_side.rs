//! Which Docker daemon the launcher talks to (the real one at DOCKER_HOST or the in-process
//! fake-docker), and the images each offers the demo.

use anyhow::{bail, Context, Result};
use fake_docker::FakeDockerHandle;
use protocol::Arch;

use crate::ui::Ui;

/// Images the real test daemon has (scripts/dockerd.sh builds them).
pub const REAL_IMAGE: &str = "busybox:latest";
pub const REAL_ARM64_IMAGE: &str = "busybox-arm64:latest";
/// An image the fake registry has only for linux/arm64.
pub const FAKE_ARM64_IMAGE: &str = "sandbox/arm64-only:latest";

/// The daemon in use; the fake one is stopped with the sandbox.
pub enum DockerSide {
    Fake(FakeDockerHandle),
    Real,
}

/// The real daemon's architecture, and the arm64 image to demo a mismatch with (when
/// it has one). Its images come from scripts/dockerd.sh: there is no registry to pull from.
pub async fn check_real_docker(ui: &Ui) -> Result<(Arch, Option<String>)> {
    let docker = bollard::Docker::connect_with_defaults().context("connecting to DOCKER_HOST")?;
    let version = docker
        .version()
        .await
        .context("asking the Docker daemon at DOCKER_HOST for its version")?;
    let arch = version
        .arch
        .as_deref()
        .and_then(Arch::from_docker)
        .context("the Docker daemon reports no known architecture")?;
    if docker.inspect_image(REAL_IMAGE).await.is_err() {
        bail!(
            "the Docker daemon at DOCKER_HOST has no {REAL_IMAGE} image (scripts/dockerd.sh start \
             builds it); or unset DOCKER_HOST / pass --fake-docker to use fake-docker"
        );
    }
    let arm = match docker.inspect_image(REAL_ARM64_IMAGE).await {
        Ok(_) => Some(REAL_ARM64_IMAGE.to_string()),
        Err(_) => {
            ui.line(format!("(no {REAL_ARM64_IMAGE} on the daemon)"));
            None
        }
    };
    Ok((arch, arm))
}
