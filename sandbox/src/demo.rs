//! The demo itself, once the backend, the Docker side and the launcher are up: waits for
//! registration, schedules the demo runs, checks how each ended, prints the summary and
//! (with --keep) how to use what keeps running.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fake_backend::{kinds, BackendHandle, BinaryContent, ScheduleRun};
use protocol::api::reason_codes;
use protocol::{Arch, RunState};

use crate::cli::Cli;
use crate::docker_side::REAL_ARM64_IMAGE;
use crate::launcher_proc::{self, LauncherProcess};
use crate::signals::Stop;
use crate::summary::{render_table, RunSummary};
use crate::ui::{self, Names, Ui};

/// The launcher's capacity (phase 1 schedules one run more, so one waits).
pub const CAPACITY: u32 = 2;
/// Generous bounds: the demo takes a few seconds; these only stop a hang.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);
const DEMO_TIMEOUT: Duration = Duration::from_secs(180);

/// What the demo runs against once everything is up.
pub struct Env {
    pub ui: Ui,
    pub backend: BackendHandle,
    pub names: Names,
    /// The last backend event the progress display has narrated.
    pub shown: tokio::sync::watch::Receiver<u64>,
    pub data_dir: PathBuf,
    pub docker_host: String,
    pub real_docker: bool,
    pub arch: Arch,
    pub pool: String,
    pub arm64_image: Option<String>,
}

/// Registration, the demo, the summary and (with --keep) the wait for Ctrl-C. Stops early
/// on a signal or when the launcher exits on its own.
pub async fn drive(
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

    pub fn publish(&self, version: &str) -> Result<()> {
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
