//! What both benchmarks set up the same way: the two fakes, a padded worker binary, the
//! launcher's environment, and the events they wait on.

use std::path::Path;

use fake_backend::{
    kinds, BackendConfig, BackendHandle, BinaryContent, FakeBackend, PoolCredentials,
};
use fake_docker::{FakeDocker, FakeDockerHandle};
use protocol::Arch;

pub struct Fakes {
    pub dir: tempfile::TempDir,
    pub backend: BackendHandle,
    pub docker: FakeDockerHandle,
}

/// The fake backend (2048-bit pool keys, no admin API) and fake-docker, in a temp dir
/// named after `prefix`.
pub async fn start_fakes(prefix: &str) -> Fakes {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temp dir");
    let mut cfg = BackendConfig::new(dir.path().join("backend"));
    cfg.pool_key_bits = 2048;
    cfg.admin = false;
    let backend = FakeBackend::start(cfg).await.expect("fake backend");
    let docker = FakeDocker::start(fake_docker::Config::default())
        .await
        .expect("fake-docker");
    Fakes {
        dir,
        backend,
        docker,
    }
}

/// An amd64 ELF stub for `version`, padded to `size` bytes.
pub fn padded_binary(version: &str, size: usize) -> BinaryContent {
    let mut bytes = fake_backend::binaries::elf_stub(Arch::Amd64, version);
    bytes.resize(size, 0x5a);
    BinaryContent::Bytes(bytes)
}

/// The launcher's environment for `creds`, against `docker_host`, keeping its files in
/// `data_dir` (created here).
pub fn launcher_env(
    creds: &PoolCredentials,
    docker_host: String,
    data_dir: &Path,
    capacity: u32,
) -> Vec<(&'static str, String)> {
    std::fs::create_dir_all(data_dir).expect("launcher dir");
    vec![
        ("SPACELIFT_TOKEN", creds.token.clone()),
        (
            "SPACELIFT_POOL_PRIVATE_KEY",
            creds.private_key_b64.clone().expect("generated key"),
        ),
        ("DOCKER_HOST", docker_host),
        ("SPACELIFT_WORKER_NETWORK", "none".to_string()),
        (
            "SPACELIFT_LAUNCHER_DATA_DIR",
            data_dir.display().to_string(),
        ),
        ("SPACELIFT_LAUNCHER_CAPACITY", capacity.to_string()),
    ]
    .into_iter()
    .chain(
        launcher::settings::RunUser::unprivileged_self()
            .map(|u| ("SPACELIFT_LAUNCHER_RUN_USER", u.to_string())),
    )
    .collect()
}

pub fn is_start(e: &fake_docker::Event) -> bool {
    e.kind == "container" && e.action == "start"
}

/// A backend event saying a run reached a terminal state.
pub fn run_ended(e: &fake_backend::Event) -> bool {
    e.kind == kinds::RUN_TRANSITION
        && matches!(
            e.str("to"),
            Some("finished" | "failed" | "canceled" | "timed_out")
        )
}
