//! Set-up and tear-down around the demo: the data dir, the fake backend, the Docker side and
//! the launcher process, started in that order and stopped in reverse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use fake_backend::{BackendConfig, BackendHandle, FakeBackend};
use fake_docker::FakeDocker;
use protocol::Arch;

use crate::cli::Cli;
use crate::demo::{self, Env, CAPACITY};
use crate::docker_side::{check_real_docker, DockerSide, FAKE_ARM64_IMAGE, REAL_IMAGE};
use crate::launcher_proc::{self, LauncherProcess};
use crate::signals::Stop;
use crate::ui::{self, Names, Ui};

/// Short, so a run whose launcher dies during the demo is failed (worker lost) quickly.
const LEASE_TTL: Duration = Duration::from_secs(6);
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Returns whether every demo run ended as expected.
pub async fn run(cli: Cli) -> Result<bool> {
    let mut stop = Stop::install()?;
    let ui = Ui::new(!cli.no_progress);
    let data_dir = prepare_data_dir(cli.data_dir.as_deref())?;
    let launcher_bin = match &cli.launcher {
        Some(p) => p.clone(),
        None => {
            let ui = ui.clone();
            tokio::task::spawn_blocking(move || launcher_proc::locate_or_build(&ui))
                .await
                .context("building the launcher")??
        }
    };
    ui.line(format!("launcher binary: {}", launcher_bin.display()));
    ui.line(format!("data dir: {}", data_dir.display()));

    ui.set_message("starting the fake backend");
    let mut config = BackendConfig::new(data_dir.join("backend"));
    config.pool_key_bits = 2048;
    config.admin = true;
    // An offer the launcher leaves unclaimed is re-sent after one lease TTL; 30s would
    // stall the demo when that happens (see `run.offer_expired` in the narration).
    config.lease_ttl = LEASE_TTL;
    let backend = FakeBackend::start(config)
        .await
        .context("starting the fake backend")?;
    let names: Names = Arc::new(Mutex::new(BTreeMap::new()));
    let (shown_tx, shown) = tokio::sync::watch::channel(0u64);
    let watcher = tokio::spawn(ui::watch(
        backend.clone(),
        ui.clone(),
        names.clone(),
        backend.subscribe(),
        shown_tx,
    ));
    ui.line(format!(
        "fake backend: API {}, broker {}, admin {}",
        backend.api_endpoint(),
        backend.broker_endpoint(),
        backend
            .admin_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into())
    ));

    let started = Started {
        ui: ui.clone(),
        backend: backend.clone(),
        names,
        shown,
        data_dir: data_dir.clone(),
        launcher_bin,
    };
    let result = with_backend(&cli, &mut stop, started).await;

    ui.set_message("stopping the fake backend");
    watcher.abort();
    backend.shutdown().await;
    ui.clear();
    if result.is_ok() {
        println!("Stopped. Files are in {}", data_dir.display());
    }
    result
}

/// What is up once the backend runs.
struct Started {
    ui: Ui,
    backend: BackendHandle,
    names: Names,
    shown: tokio::sync::watch::Receiver<u64>,
    data_dir: PathBuf,
    launcher_bin: PathBuf,
}

async fn with_backend(cli: &Cli, stop: &mut Stop, started: Started) -> Result<bool> {
    let Started {
        ui,
        backend,
        names,
        shown,
        data_dir,
        launcher_bin,
    } = started;
    let (ui, backend, names, data_dir, launcher_bin) = (
        &ui,
        &backend,
        &names,
        data_dir.as_path(),
        launcher_bin.as_path(),
    );
    let creds = backend.create_pool().context("creating a pool")?;
    let key = creds
        .private_key_b64
        .clone()
        .context("the backend made no private key")?;
    ui.line(format!("pool {} created", creds.pool_ulid));

    let real_host = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty() && !cli.fake_docker);
    let (docker, docker_host, arch, arm64_image) = match real_host {
        Some(host) => {
            let (arch, arm) = check_real_docker(ui).await?;
            ui.line(format!("Docker: the real daemon at {host} (linux/{arch})"));
            (DockerSide::Real, host, arch, arm)
        }
        None => {
            ui.set_message("starting fake-docker");
            let socket = data_dir.join("docker.sock");
            let config = fake_docker::Config {
                // A unix socket path must fit in sun_path (108 bytes).
                socket: (socket.as_os_str().len() < 100).then_some(socket),
                ..fake_docker::Config::default()
            };
            let fake = FakeDocker::start(config)
                .await
                .context("starting fake-docker")?;
            fake.admin()
                .set_image_platforms(FAKE_ARM64_IMAGE, &["linux/arm64"])
                .context("adding the arm64-only image to the fake registry")?;
            let host = fake.docker_host();
            ui.line(format!("Docker: fake-docker at {host} (linux/amd64)"));
            (
                DockerSide::Fake(fake),
                host,
                Arch::Amd64,
                Some(FAKE_ARM64_IMAGE.to_string()),
            )
        }
    };
    let real_docker = matches!(docker, DockerSide::Real);

    let env = Env {
        ui: ui.clone(),
        backend: backend.clone(),
        names: names.clone(),
        shown,
        data_dir: data_dir.to_path_buf(),
        docker_host,
        real_docker,
        arch,
        pool: creds.pool_ulid.clone(),
        arm64_image,
    };
    ui.set_planned(if env.arm64_image.is_some() { 5 } else { 4 });
    env.publish("v1")?;

    let launcher_dir = data_dir.join("launcher");
    std::fs::create_dir_all(&launcher_dir)
        .with_context(|| format!("creating {}", launcher_dir.display()))?;
    let mut vars = vec![
        ("SPACELIFT_TOKEN".to_string(), creds.token.clone()),
        ("SPACELIFT_POOL_PRIVATE_KEY".to_string(), key),
        ("DOCKER_HOST".to_string(), env.docker_host.clone()),
        ("SPACELIFT_WORKER_NETWORK".to_string(), "none".to_string()),
        (
            "SPACELIFT_LAUNCHER_DATA_DIR".to_string(),
            launcher_dir.display().to_string(),
        ),
        (
            "SPACELIFT_LAUNCHER_CAPACITY".to_string(),
            CAPACITY.to_string(),
        ),
        (
            "SPACELIFT_LAUNCHER_STOP_GRACE".to_string(),
            "5s".to_string(),
        ),
        // A plain-text log file for people to read: off a terminal the launcher would
        // write JSON lines (`auto`).
        (
            "SPACELIFT_LAUNCHER_LOG_FORMAT".to_string(),
            "text".to_string(),
        ),
        ("NO_COLOR".to_string(), "1".to_string()),
    ];
    // Only root can give run workspaces to Spacelift's user (1983); without root the
    // demo runs are the sandbox user's own.
    if let Some(u) = launcher::settings::RunUser::unprivileged_self() {
        vars.push(("SPACELIFT_LAUNCHER_RUN_USER".to_string(), u.to_string()));
    }
    if real_docker {
        vars.push((
            "SPACELIFT_DEFAULT_RUNNER_IMAGE".to_string(),
            REAL_IMAGE.to_string(),
        ));
    }
    let log = data_dir.join("launcher.log");
    ui.set_message("starting the launcher");
    let since = backend.last_seq();
    let mut launcher = LauncherProcess::spawn(launcher_bin, &vars, &log)?;
    ui.line(format!(
        "launcher started (pid {}, capacity {CAPACITY}); its log: {}",
        launcher.pid,
        log.display()
    ));

    let outcome = demo::drive(cli, stop, &env, &mut launcher, since).await;

    ui.set_message("stopping the launcher (SIGTERM)");
    match launcher.terminate(STOP_GRACE).await {
        Ok(status) => ui.line(format!("launcher exited: {status}")),
        Err(e) => ui.line(format!("stopping the launcher: {e:#}")),
    }
    if let DockerSide::Fake(fake) = docker {
        ui.set_message("stopping fake-docker");
        fake.shutdown().await;
    }
    if outcome.is_err() {
        ui.text(format!(
            "launcher log ({}), last lines:\n{}",
            log.display(),
            launcher.log_tail(20)
        ));
    }
    outcome
}

/// The data dir, with what a previous sandbox left in it removed.
fn prepare_data_dir(given: Option<&Path>) -> Result<PathBuf> {
    let dir = match given {
        Some(d) => d.to_path_buf(),
        None => launcher_proc::workspace_root().join(".sandbox"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    for sub in ["backend", "launcher"] {
        let p = dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    for file in ["docker.sock", "launcher.log"] {
        let p = dir.join(file);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(dir)
}
