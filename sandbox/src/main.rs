//! `cargo run -p sandbox`: the fake backend and a fake Docker daemon in this process, the
//! real `spacelift-launcher` binary as a subprocess, and a few demo runs with live
//! progress and a summary. `--keep` leaves it all running for the `fake-backend` and
//! `docker` CLIs until Ctrl-C.

mod launcher_proc;
mod ui;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use fake_backend::{kinds, BackendConfig, BackendHandle, BinaryContent, FakeBackend, ScheduleRun};
use fake_docker::{FakeDocker, FakeDockerHandle};
use protocol::api::reason_codes;
use protocol::{Arch, RunState};
use serde::Serialize;
use tokio::signal::unix::{signal, Signal, SignalKind};

use launcher_proc::LauncherProcess;
use ui::{Names, Ui};

/// Images the real test daemon has (scripts/dockerd.sh builds them).
const REAL_IMAGE: &str = "busybox:latest";
const REAL_ARM64_IMAGE: &str = "busybox-arm64:latest";
/// An image the fake registry has only for linux/arm64.
const FAKE_ARM64_IMAGE: &str = "sandbox/arm64-only:latest";

const CAPACITY: u32 = 2;
/// Short, so a run whose launcher dies during the demo is failed (worker lost) quickly.
const LEASE_TTL: Duration = Duration::from_secs(6);
/// Generous bounds: the demo takes a few seconds; these only stop a hang.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);
const DEMO_TIMEOUT: Duration = Duration::from_secs(180);
const STOP_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "sandbox",
    about = "Fake backend + fake Docker daemon + the real spacelift-launcher, with demo runs"
)]
struct Cli {
    /// Leave everything running after the demo (for the fake-backend and docker CLIs),
    /// until Ctrl-C.
    #[arg(long)]
    keep: bool,
    /// Plain timestamped lines instead of progress bars (also the default when stderr is
    /// not a terminal).
    #[arg(long)]
    no_progress: bool,
    /// Use the in-process fake Docker daemon even when DOCKER_HOST is set.
    #[arg(long)]
    fake_docker: bool,
    /// Where the backend, the launcher and the Docker socket keep their files (default:
    /// `.sandbox` in the repository root). Its `backend/` and `launcher/` subdirectories
    /// and `docker.sock`/`launcher.log` are replaced.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    summary_json: Option<PathBuf>,
    /// The launcher binary (default: spacelift-launcher next to this executable, built
    /// with cargo when missing or stale).
    #[arg(long, value_name = "PATH", env = "SANDBOX_LAUNCHER_BIN")]
    launcher: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sandbox: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sandbox: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT (Ctrl-C) and SIGTERM, registered at once so neither kills us mid-shutdown.
struct Stop {
    int: Signal,
    term: Signal,
}

impl Stop {
    fn install() -> Result<Stop> {
        Ok(Stop {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "Ctrl-C",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

enum DockerSide {
    Fake(FakeDockerHandle),
    Real,
}

struct Env {
    ui: Ui,
    backend: BackendHandle,
    names: Names,
    /// The last backend event the progress display has narrated.
    shown: tokio::sync::watch::Receiver<u64>,
    data_dir: PathBuf,
    docker_host: String,
    real_docker: bool,
    arch: Arch,
    pool: String,
    arm64_image: Option<String>,
}

/// Returns whether every demo run ended as expected.
async fn run(cli: Cli) -> Result<bool> {
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

    let outcome = drive(cli, stop, &env, &mut launcher, since).await;

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

/// Registration, the demo, the summary and (with --keep) the wait for Ctrl-C. Stops early
/// on a signal or when the launcher exits on its own.
async fn drive(
    cli: &Cli,
    stop: &mut Stop,
    env: &Env,
    launcher: &mut LauncherProcess,
    since: u64,
) -> Result<bool> {
    let ui = &env.ui;
    ui.set_message("waiting for the launcher to register");
    // Online = registered, subscribed to its MQTT topic, and a first heartbeat.
    let online = env
        .backend
        .wait_for_since(since, |e| e.kind == kinds::WORKER_ONLINE);
    tokio::select! {
        ev = online => ui.line(format!(
            "launcher ready: worker {} is online",
            ev.worker.as_deref().unwrap_or("?")
        )),
        status = launcher.child.wait() => bail!("the launcher exited before registering: {}", status?),
        why = stop.recv() => { ui.line(format!("{why}: stopping")); return Ok(false); }
        _ = tokio::time::sleep(REGISTER_TIMEOUT) => bail!("the launcher did not register within {REGISTER_TIMEOUT:?}"),
    }

    let summary = tokio::select! {
        s = demo(env) => s?,
        status = launcher.child.wait() => bail!("the launcher exited during the demo: {}", status?),
        why = stop.recv() => { ui.line(format!("{why}: stopping")); return Ok(false); }
        _ = tokio::time::sleep(DEMO_TIMEOUT) => bail!("the demo did not finish within {DEMO_TIMEOUT:?}"),
    };
    ui.set_message("demo done");
    env.catch_up().await;
    let all_ok = summary.iter().all(|r| r.as_expected);
    ui.text(render_table(&summary));
    if let Some(path) = &cli.summary_json {
        let json = serde_json::to_string_pretty(&summary).context("serializing the summary")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    ui.text(if all_ok {
        "Every run ended as expected.".to_string()
    } else {
        "SOME RUNS DID NOT END AS EXPECTED (see the table above).".to_string()
    });

    if cli.keep {
        ui.text(keep_instructions(env, &launcher.log));
        ui.set_message("running; Ctrl-C stops everything");
        tokio::select! {
            why = stop.recv() => ui.line(format!("{why}: stopping")),
            status = launcher.child.wait() => ui.line(format!("the launcher exited: {}", status?)),
        }
    }
    Ok(all_ok)
}

impl Env {
    /// Waits until the progress display has narrated every backend event so far, so the
    /// summary comes after them (bounded: the display is cosmetic).
    async fn catch_up(&self) {
        let target = self.backend.last_seq();
        let mut shown = self.shown.clone();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), shown.wait_for(|s| *s >= target)).await;
    }

    fn publish(&self, version: &str) -> Result<()> {
        // fake-docker never executes the binary (a run's FAKE_DOCKER_BEHAVIOUR decides);
        // a real busybox container runs the shell-script test worker.
        let content = if self.real_docker {
            BinaryContent::ShellWorker
        } else {
            BinaryContent::ElfStub
        };
        self.backend
            .publish_version(self.arch, Some(version), content)
            .with_context(|| format!("publishing worker {version}"))?;
        Ok(())
    }
}

/// One demo run: what it does and how it must end.
struct DemoRun {
    name: &'static str,
    image: Option<String>,
    stdout: Vec<&'static str>,
    stderr: Vec<&'static str>,
    exit_code: i64,
    duration_ms: u64,
    expect_state: RunState,
    expect_exit: Option<i64>,
    expect_reason: Option<&'static str>,
    expect_version: Option<&'static str>,
}

impl DemoRun {
    fn ok(
        name: &'static str,
        stdout: Vec<&'static str>,
        duration_ms: u64,
        version: &'static str,
    ) -> DemoRun {
        DemoRun {
            name,
            image: None,
            stdout,
            stderr: Vec::new(),
            exit_code: 0,
            duration_ms,
            expect_state: RunState::Finished,
            expect_exit: Some(0),
            expect_reason: None,
            expect_version: Some(version),
        }
    }

    fn schedule(&self, env: &Env) -> Result<String> {
        let mut req =
            ScheduleRun::new(env.pool.clone()).stack(format!("{}{}", ui::STACK_PREFIX, self.name));
        if let Some(image) = &self.image {
            req = req.image(image.clone());
        }
        // fake-docker reads FAKE_DOCKER_BEHAVIOUR; the shell worker in a real container
        // reads SPACELIFT_TEST_*. Each ignores the other's.
        let behaviour = serde_json::json!({
            "stdout": self.stdout,
            "stderr": self.stderr,
            "exit_code": self.exit_code,
            "duration_ms": self.duration_ms,
        });
        req = req
            .env(fake_docker::BEHAVIOUR_ENV, behaviour.to_string())
            .env("SPACELIFT_TEST_EXIT_CODE", self.exit_code.to_string());
        if !self.stdout.is_empty() {
            req = req.env("SPACELIFT_TEST_MESSAGE", self.stdout.join("\n"));
        }
        if let Some(line) = self.stderr.first() {
            req = req.env("SPACELIFT_TEST_STDERR", *line);
        }
        if self.duration_ms > 0 {
            req = req.env(
                "SPACELIFT_TEST_SLEEP",
                self.duration_ms.div_ceil(1000).to_string(),
            );
        }
        let ulid = env
            .backend
            .schedule_run(req)
            .with_context(|| format!("scheduling run {}", self.name))?;
        env.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ulid.clone(), self.name.to_string());
        env.ui.line(format!("scheduled run {} ({ulid})", self.name));
        Ok(ulid)
    }
}

/// A row of the summary.
#[derive(Debug, Clone, Serialize)]
struct RunSummary {
    name: String,
    run_ulid: String,
    state: RunState,
    exit_code: Option<i64>,
    reason: Option<String>,
    worker_version: Option<String>,
    expected: String,
    as_expected: bool,
    log_lines: Vec<String>,
}

async fn demo(env: &Env) -> Result<Vec<RunSummary>> {
    let ui = &env.ui;
    let before = vec![
        DemoRun::ok(
            "hello",
            vec![
                "Hello from the sandbox!",
                "Plan: 3 to add, 0 to change, 0 to destroy.",
            ],
            1500,
            "v1",
        ),
        DemoRun::ok(
            "lines",
            vec![
                "step 1/4 init",
                "step 2/4 plan",
                "step 3/4 apply",
                "step 4/4 done",
            ],
            800,
            "v1",
        ),
        DemoRun {
            name: "fails",
            image: None,
            stdout: vec!["about to fail on purpose"],
            stderr: vec!["Error: exit status 3"],
            exit_code: 3,
            duration_ms: 500,
            expect_state: RunState::Failed,
            expect_exit: Some(3),
            expect_reason: Some(reason_codes::NONZERO_EXIT),
            expect_version: Some("v1"),
        },
    ];
    ui.set_message("phase 1: three runs on worker v1");
    ui.line(format!(
        "phase 1: {} runs on worker v1 (capacity {CAPACITY}, so one waits)",
        before.len()
    ));
    let mut scheduled = Vec::new();
    for r in &before {
        scheduled.push(r.schedule(env)?);
    }
    for ulid in &scheduled {
        wait_terminal(&env.backend, ulid).await;
    }

    ui.set_message("phase 2: worker v2, an arm64-only image");
    ui.line("phase 2: publishing worker v2, then two more runs");
    env.publish("v2")?;
    let mut after = vec![DemoRun::ok(
        "after-bump",
        vec!["this run uses the newly published worker"],
        500,
        "v2",
    )];
    match &env.arm64_image {
        Some(image) => after.push(DemoRun {
            name: "arm64-image",
            image: Some(image.clone()),
            stdout: Vec::new(),
            stderr: Vec::new(),
            exit_code: 0,
            duration_ms: 0,
            expect_state: RunState::Failed,
            expect_exit: None,
            expect_reason: Some(reason_codes::ARCHITECTURE_MISMATCH),
            expect_version: None,
        }),
        None => ui.line(format!(
            "skipping the architecture-mismatch run: the Docker daemon has no {REAL_ARM64_IMAGE}"
        )),
    }
    for r in &after {
        scheduled.push(r.schedule(env)?);
    }
    for ulid in &scheduled {
        wait_terminal(&env.backend, ulid).await;
    }

    let mut summary = Vec::new();
    for (r, ulid) in before.iter().chain(after.iter()).zip(&scheduled) {
        let view = env
            .backend
            .run(ulid)
            .with_context(|| format!("run {ulid} vanished"))?;
        let reason = view.reason.as_ref().map(|r| r.code.clone());
        let as_expected = view.state == r.expect_state
            && (r.expect_exit.is_none() || view.exit_code == r.expect_exit)
            && reason.as_deref() == r.expect_reason
            && (r.expect_version.is_none() || view.worker_version.as_deref() == r.expect_version);
        let mut expected = r.expect_state.to_string();
        if let Some(code) = r.expect_exit {
            expected.push_str(&format!(" exit {code}"));
        }
        if let Some(reason) = r.expect_reason {
            expected.push_str(&format!(" {reason}"));
        }
        if let Some(v) = r.expect_version {
            expected.push_str(&format!(" {v}"));
        }
        summary.push(RunSummary {
            name: r.name.to_string(),
            run_ulid: ulid.clone(),
            state: view.state,
            exit_code: view.exit_code,
            reason,
            worker_version: view.worker_version.clone(),
            expected,
            as_expected,
            log_lines: view.log_lines.iter().map(|l| l.text.clone()).collect(),
        });
    }
    Ok(summary)
}

/// Waits (on backend events, from the start of the log) until the run is terminal.
async fn wait_terminal(backend: &BackendHandle, ulid: &str) {
    let terminal = [
        RunState::Finished,
        RunState::Failed,
        RunState::Canceled,
        RunState::TimedOut,
    ];
    backend
        .wait_for(|e| {
            e.kind == kinds::RUN_TRANSITION
                && e.run.as_deref() == Some(ulid)
                && e.str("to")
                    .is_some_and(|to| terminal.iter().any(|s| s.as_str() == to))
        })
        .await;
}

fn render_table(rows: &[RunSummary]) -> String {
    let header = [
        "run", "ulid", "state", "exit", "reason", "worker", "expected", "ok",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.run_ulid.clone(),
                r.state.to_string(),
                r.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.reason.clone().unwrap_or_else(|| "-".into()),
                r.worker_version.clone().unwrap_or_else(|| "-".into()),
                r.expected.clone(),
                if r.as_expected { "yes" } else { "NO" }.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: &[String]| {
        row.iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = String::from("\nSummary\n");
    out.push_str(&line(&header.map(String::from)));
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  "),
    );
    out.push('\n');
    for row in &cells {
        out.push_str(&line(row));
        out.push('\n');
    }
    out.push_str("\nRun logs as the backend received them:\n");
    for r in rows {
        out.push_str(&format!("  {}:\n", r.name));
        for l in &r.log_lines {
            out.push_str(&format!("    | {l}\n"));
        }
    }
    out.push('\n');
    out
}

fn keep_instructions(env: &Env, log: &Path) -> String {
    let root = launcher_proc::workspace_root();
    let fb_bin = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("fake-backend")))
        .filter(|p| p.is_file())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| {
            format!(
                "cargo run -q --manifest-path {} -p fake-backend --",
                root.join("Cargo.toml").display()
            )
        });
    let backend_dir = env.data_dir.join("backend");
    let admin = std::fs::read_to_string(backend_dir.join("admin.addr")).unwrap_or_default();
    let behaviour = r#"{"stdout":["hi from the CLI"],"duration_ms":3000}"#;
    let mut s = String::new();
    s.push_str("\nEverything keeps running. From another terminal:\n\n");
    s.push_str(&format!(
        "  export FAKE_BACKEND_DATA_DIR={}   # admin API at {}\n",
        backend_dir.display(),
        admin.trim()
    ));
    s.push_str(&format!("  export DOCKER_HOST={}\n", env.docker_host));
    s.push_str(&format!("  FB=\"{fb_bin}\"\n\n"));
    s.push_str(&format!(
        "  $FB run schedule --pool {} --env 'FAKE_DOCKER_BEHAVIOUR={behaviour}'\n",
        env.pool
    ));
    s.push_str("  $FB run list            # or: $FB run show RUN\n");
    s.push_str("  $FB worker list\n");
    s.push_str(&format!(
        "  $FB version publish --arch {} --version v3{}\n",
        env.arch,
        if env.real_docker { " --shell" } else { "" }
    ));
    s.push_str("  $FB events --kind run.\n");
    s.push_str("  docker ps -a            # the launcher's containers\n");
    s.push_str("  docker logs CONTAINER\n\n");
    s.push_str(&format!("  launcher log: {}\n", log.display()));
    s.push_str("\nPress Ctrl-C here to stop everything.\n");
    s
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

/// The real daemon's architecture, and the arm64 image to demo a mismatch with (when
/// it has one). Its images come from scripts/dockerd.sh: there is no registry to pull from.
async fn check_real_docker(ui: &Ui) -> Result<(Arch, Option<String>)> {
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
