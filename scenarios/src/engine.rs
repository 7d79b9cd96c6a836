//! Executes a scenario's phases against a [`World`], then checks the invariants and the
//! scenario's expectations. Steps wait on events with a deadline; nothing sleeps to wait.

use std::time::Duration;

use fake_backend::{Fault as BackendFault, ScheduleRun};
use launcher::container_spec::labels;

use crate::checks;
use crate::error::ScenarioError;
use crate::launcher_node::Captured;
use crate::model::{Behaviour, DockerKind, Fault, Mode, Scenario, ScheduleStep, Step};
use crate::report::{Report, Trace};
use crate::timeline::Recorder;
use crate::world::World;

/// How long the engine waits, at the end, for every run to reach a terminal state and for
/// launchers to drain.
const SETTLE: Duration = Duration::from_secs(90);

/// One execution in wire mode (real sockets, real time).
pub async fn execute(scenario: &Scenario, seed: u64) -> Result<Report, ScenarioError> {
    execute_in(scenario, seed, Mode::Wire, Captured::default()).await
}

/// One execution in `mode`. Sim mode must run on [`crate::sim::runtime`]; its launchers'
/// logs go to `capture`, which the caller installs as the thread's subscriber.
pub async fn execute_in(
    scenario: &Scenario,
    seed: u64,
    mode: Mode,
    capture: Captured,
) -> Result<Report, ScenarioError> {
    execute_inspect(scenario, seed, mode, capture, |_| {}).await
}

/// [`execute_in`], with `inspect` called on the world once checked, before it is torn down.
pub async fn execute_inspect(
    scenario: &Scenario,
    seed: u64,
    mode: Mode,
    capture: Captured,
    inspect: impl FnOnce(&World),
) -> Result<Report, ScenarioError> {
    let mut rec = Recorder::start();
    let mut world = World::build(scenario, seed, mode, capture).await?;
    rec.observe(&world);
    let mut trace = Trace::default();
    let mut failures = Vec::new();

    'phases: for phase in &scenario.phases {
        trace.note(format!("phase {}", phase.name));
        for (i, step) in phase.steps.iter().enumerate() {
            let began = rec.now_ms();
            let outcome = step_once(&mut world, step, &mut trace).await?;
            rec.step(
                &world,
                &phase.name,
                step,
                began,
                outcome.as_ref().err().map(String::as_str),
            );
            if let Err(msg) = outcome {
                failures.push(format!("phase {:?} step {}: {msg}", phase.name, i + 1));
                break 'phases;
            }
        }
    }

    // Settle: every run ends; then every launcher still running drains and exits.
    settle_runs(&world, &mut failures).await;
    for name in world.launchers.keys().cloned().collect::<Vec<_>>() {
        let l = world.launchers.get_mut(&name).expect("known");
        if let Some(mut node) = l.node.take() {
            if node.exited().is_none() {
                node.signal().await;
                match tokio::time::timeout(SETTLE, node.wait()).await {
                    Ok(exit) => l.exits.push(exit),
                    Err(_) => {
                        failures.push(format!("launcher {name} did not drain and exit on SIGTERM"));
                        l.exits.push(node.crash().await);
                    }
                }
            } else if let Some(exit) = node.exited() {
                l.exits.push(exit.clone());
            }
        }
    }

    failures.extend(checks::invariants(scenario, &world));
    failures.extend(checks::secrets_kept(&world));
    failures.extend(real_leftovers(&world).await);
    failures.extend(checks::expectations(scenario, &world));
    trace.extend(checks::canonical(scenario, &world));
    trace.timeline = rec.finish(&world, &failures, &trace);
    let full = crate::report::full_trace(&world);
    let report = Report {
        seed,
        mode,
        passed: failures.is_empty(),
        failures,
        trace,
        full,
    };
    inspect(&world);
    if let Some(b) = world.backend.take() {
        b.shutdown().await;
    }
    // Launchers are gone: their in-memory connections dropped every other holder.
    world.launchers.clear();
    for (_, d) in std::mem::take(&mut world.dockers) {
        if let Some(f) = d.fake.and_then(|f| std::sync::Arc::try_unwrap(f).ok()) {
            f.shutdown().await;
        }
    }
    Ok(report)
}

/// Containers of this world's workers still on a real daemon (the fake ones are checked
/// from the fake's own state in `checks`).
async fn real_leftovers(world: &World) -> Vec<String> {
    let mut out = Vec::new();
    for (name, d) in &world.dockers {
        if d.fake.is_some() {
            continue;
        }
        let path = d.host.trim_start_matches("unix://");
        let docker =
            match bollard::Docker::connect_with_unix(path, 30, bollard::API_DEFAULT_VERSION) {
                Ok(d) => d,
                Err(e) => {
                    out.push(format!("docker {name}: cannot list containers: {e}"));
                    continue;
                }
            };
        for l in world.launchers.values() {
            let Some(worker) = &l.worker_ulid else {
                continue;
            };
            let filters = std::collections::HashMap::from([(
                "label".to_string(),
                vec![format!("{}={worker}", labels::WORKER)],
            )]);
            let opts = bollard::query_parameters::ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            };
            match docker.list_containers(Some(opts)).await {
                Ok(list) => {
                    for c in list {
                        out.push(format!(
                            "docker {name}: container {:?} left behind",
                            c.names.unwrap_or_default()
                        ));
                    }
                }
                Err(e) => out.push(format!("docker {name}: cannot list containers: {e}")),
            }
        }
    }
    out
}

async fn settle_runs(world: &World, failures: &mut Vec<String>) {
    let backend = world.backend();
    let deadline = tokio::time::Instant::now() + SETTLE;
    for (name, ulid) in &world.runs {
        let done = wait_until(world, deadline, || {
            backend.run_state(ulid).is_some_and(|s| s.is_terminal())
        })
        .await;
        if !done {
            failures.push(format!(
                "run {name} never reached a terminal state (stuck in {})",
                backend
                    .run_state(ulid)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "?".into())
            ));
        }
    }
}

/// Waits until `cond` holds, re-checking after every backend event.
async fn wait_until(
    world: &World,
    deadline: tokio::time::Instant,
    mut cond: impl FnMut() -> bool,
) -> bool {
    let mut events = world.backend().subscribe();
    loop {
        if cond() {
            return true;
        }
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => return cond(),
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(_)) => return cond(),
        }
    }
}

/// Runs one step. The outer error is a harness failure; the inner one a scenario failure.
async fn step_once(
    world: &mut World,
    step: &Step,
    trace: &mut Trace,
) -> Result<Result<(), String>, ScenarioError> {
    let harness = |e: fake_backend::BackendError| ScenarioError::Harness(e.to_string());
    match step {
        Step::Schedule(s) => {
            let ulid = world
                .backend()
                .schedule_run(schedule_request(world, s))
                .map_err(harness)?;
            trace.note(format!("schedule {}", s.run));
            world.add_run(s.run.clone(), ulid);
        }
        Step::WaitRun { run, state, within } => {
            let ulid = world.run_ulid(run).expect("validated").to_string();
            let want = *state;
            let backend = world.backend();
            let deadline = tokio::time::Instant::now() + *within;
            let reached = wait_until(world, deadline, || {
                backend
                    .run(&ulid)
                    .is_some_and(|r| r.history.contains(&want) || r.state == want)
            })
            .await;
            if !reached {
                let now = backend.run_state(&ulid).map(|s| s.to_string());
                return Ok(Err(format!(
                    "run {run} did not reach {state} within {} (now {})",
                    humantime::format_duration(*within),
                    now.unwrap_or_else(|| "unknown".into())
                )));
            }
        }
        Step::AwaitRun { run, state, within } => {
            let ulid = world.run_ulid(run).expect("validated").to_string();
            let backend = world.backend();
            let deadline = tokio::time::Instant::now() + *within;
            let reached = || {
                backend.run(&ulid).is_some_and(|r| {
                    r.history.contains(state) || r.state == *state || r.state.is_terminal()
                })
            };
            if !wait_until(world, deadline, reached).await {
                return Ok(Err(format!(
                    "run {run} neither reached {state} nor ended within {}",
                    humantime::format_duration(*within)
                )));
            }
        }
        Step::WaitEvent {
            event,
            run,
            launcher,
            count,
            within,
        } => {
            let run_ulid = run
                .as_ref()
                .and_then(|r| world.run_ulid(r))
                .map(str::to_string);
            let worker = match launcher {
                Some(l) => Some(world.worker_of(l)?),
                None => None,
            };
            let backend = world.backend();
            let matching = || {
                backend
                    .events()
                    .iter()
                    .filter(|e| e.kind == *event)
                    .filter(|e| run_ulid.is_none() || e.run == run_ulid)
                    .filter(|e| worker.is_none() || e.worker == worker)
                    .count()
            };
            let deadline = tokio::time::Instant::now() + *within;
            if !wait_until(world, deadline, || matching() >= *count).await {
                return Ok(Err(format!(
                    "saw {} of {count} {event} events within {}",
                    matching(),
                    humantime::format_duration(*within)
                )));
            }
        }
        Step::Cancel { run } => {
            let ulid = world.run_ulid(run).expect("validated").to_string();
            world.backend().cancel_run(&ulid).map_err(harness)?;
        }
        Step::PublishVersion(v) => world.publish(v)?,
        Step::Drain { launcher } => {
            let w = world.worker_of(launcher)?;
            world.backend().drain(&w).map_err(harness)?;
        }
        Step::Undrain { launcher } => {
            let w = world.worker_of(launcher)?;
            world.backend().undrain(&w).map_err(harness)?;
        }
        Step::Cycle { launcher } => {
            let w = world.worker_of(launcher)?;
            world.backend().cycle(&w).map_err(harness)?;
        }
        Step::Signal { launcher, count } => {
            let l = &world.launchers[launcher];
            let Some(node) = &l.node else {
                return Ok(Err(format!("launcher {launcher} is not running")));
            };
            for _ in 0..*count {
                node.signal().await;
            }
        }
        Step::CrashLauncher { launcher } => {
            let l = world.launchers.get_mut(launcher).expect("validated");
            if let Some(mut node) = l.node.take() {
                let exit = node.crash().await;
                l.exits.push(exit);
            }
        }
        Step::StartLauncher { launcher } => world.start_launcher(launcher).await?,
        Step::WaitLauncherExit { launcher, within } => {
            let l = world.launchers.get_mut(launcher).expect("validated");
            let Some(node) = l.node.as_mut() else {
                return Ok(if l.exits.is_empty() {
                    Err(format!("launcher {launcher} was never started"))
                } else {
                    Ok(())
                });
            };
            match tokio::time::timeout(*within, node.wait()).await {
                Ok(exit) => {
                    trace.note(format!("launcher {launcher} exited: {}", exit.describe()));
                    l.exits.push(exit);
                    l.node = None;
                }
                Err(_) => {
                    return Ok(Err(format!(
                        "launcher {launcher} did not exit within {}",
                        humantime::format_duration(*within)
                    )))
                }
            }
        }
        Step::RestartDocker {
            docker,
            keep_containers,
        } => {
            let d = &world.dockers[docker];
            let Some(fake) = &d.fake else {
                return Err(ScenarioError::Harness(
                    "restart_docker needs a fake docker daemon".into(),
                ));
            };
            fake.admin().restart(fake_docker::RestartOptions {
                keep_containers: *keep_containers,
                ..Default::default()
            });
        }
        Step::RestartBackend => world.restart_backend().await?,
        Step::RevokeCredentials => world.revoke_credentials()?,
        Step::Fault(f) => {
            if let Fault::DropConnection { launcher } = f {
                // Dropping needs a connection: after an earlier drop, wait for the reconnect.
                let worker = world.worker_of(launcher)?;
                let deadline = tokio::time::Instant::now() + SETTLE;
                let backend = world.backend();
                if !wait_until(world, deadline, || backend.is_connected(&worker)).await {
                    return Ok(Err(format!("launcher {launcher} never reconnected")));
                }
            }
            inject(world, f)?
        }
    }
    Ok(Ok(()))
}

fn inject(world: &World, f: &Fault) -> Result<(), ScenarioError> {
    let backend = world.backend();
    let harness = |e: fake_backend::BackendError| ScenarioError::Harness(e.to_string());
    match f {
        Fault::DropConnection { launcher } => backend
            .inject(BackendFault::DropConnection {
                worker: world.worker_of(launcher)?,
                fire_will: false,
            })
            .map_err(harness),
        Fault::BrokerDown { for_ } => backend.broker_down(*for_).map_err(harness),
        Fault::BrokerUp => backend.broker_up().map_err(harness),
        Fault::DuplicateNextMessage { launcher } => backend
            .inject(BackendFault::DuplicateMessage {
                worker: world.worker_of(launcher)?,
                count: 1,
            })
            .map_err(harness),
        Fault::DelayNextMessage { launcher, by } => backend
            .inject(BackendFault::DelayMessage {
                worker: world.worker_of(launcher)?,
                delay_ms: by.as_millis() as u64,
                count: 1,
            })
            .map_err(harness),
        Fault::HttpErrors {
            count,
            status,
            retry_after_secs,
            path,
        } => backend
            .inject(BackendFault::HttpError {
                status: *status,
                count: *count,
                path_prefix: path.clone(),
                retry_after_s: *retry_after_secs,
            })
            .map_err(harness),
        Fault::FullDisk { launcher, count } => {
            let l = world.launchers.get(launcher).ok_or_else(|| {
                ScenarioError::Harness(format!("full_disk: unknown launcher {launcher}"))
            })?;
            l.disk.full.fail_next(*count);
            Ok(())
        }
        Fault::CorruptDownloads { count } => backend
            .inject(BackendFault::CorruptDownload { count: *count })
            .map_err(harness),
        Fault::SlowDownloads {
            count,
            chunk_bytes,
            every,
        } => backend
            .inject(BackendFault::SlowDownload {
                count: *count,
                chunk_bytes: *chunk_bytes,
                chunk_delay_ms: every.as_millis() as u64,
            })
            .map_err(harness),
        Fault::DockerErrors {
            docker,
            route,
            count,
            status,
            message,
        } => {
            let fake = fake_of(world, docker)?;
            fake.admin()
                .fail_next(fake_docker::RouteFault {
                    route: route.clone(),
                    count: *count,
                    status: *status,
                    message: message.clone().unwrap_or_else(|| "injected fault".into()),
                })
                .map_err(|e| ScenarioError::Harness(e.to_string()))
        }
        Fault::SlowPulls {
            docker,
            image,
            count,
            every,
        } => {
            fake_of(world, docker)?
                .admin()
                .pull_fault(fake_docker::PullFault {
                    image: image.clone(),
                    count: Some(*count),
                    step_delay_ms: every.as_millis() as u64,
                    error: None,
                });
            Ok(())
        }
        Fault::FailPulls {
            docker,
            image,
            count,
        } => {
            let fake = fake_of(world, docker)?;
            fake.admin().pull_fault(fake_docker::PullFault {
                image: Some(image.clone()),
                count: *count,
                error: Some(format!("failed to pull {image}: injected registry error")),
                ..Default::default()
            });
            Ok(())
        }
    }
}

fn fake_of<'w>(
    world: &'w World,
    docker: &str,
) -> Result<&'w fake_docker::FakeDockerHandle, ScenarioError> {
    world.dockers[docker]
        .fake
        .as_deref()
        .ok_or_else(|| ScenarioError::Harness(format!("docker {docker} is real: no faults")))
}

fn schedule_request(world: &World, s: &ScheduleStep) -> ScheduleRun {
    let mut req = ScheduleRun::new(world.pool.clone())
        .run_type(s.run_type)
        .stack(format!("stack-{}", s.run));
    if let Some(image) = &s.image {
        req = req.image(image.clone());
    }
    if let Some(vendor) = &s.vendor {
        req = req.vendor(vendor.clone());
    }
    let real = world
        .dockers
        .values()
        .any(|d| d.topology.kind == DockerKind::Real);
    for (k, v) in behaviour_env(&s.behaviour, real) {
        req = req.env(k, v);
    }
    for (k, v) in &s.env {
        req = req.env(k.clone(), v.clone());
    }
    req
}

/// A behaviour as run environment: fake-docker reads `FAKE_DOCKER_BEHAVIOUR`; the shell
/// worker on a real daemon reads `SPACELIFT_TEST_*`. The backend knows neither.
fn behaviour_env(b: &Behaviour, real: bool) -> Vec<(String, String)> {
    if real {
        let mut env = vec![(
            "SPACELIFT_TEST_EXIT_CODE".to_string(),
            b.exit_code.to_string(),
        )];
        if !b.stdout.is_empty() {
            // `echo` of a multi-line value prints one line per entry.
            env.push(("SPACELIFT_TEST_MESSAGE".into(), b.stdout.join("\n")));
        }
        if let Some(line) = b.stderr.first() {
            env.push(("SPACELIFT_TEST_STDERR".into(), line.clone()));
        }
        let sleep = if b.hang {
            Some(3600)
        } else {
            b.duration.map(|d| d.as_secs().max(1))
        };
        if let Some(secs) = sleep {
            env.push(("SPACELIFT_TEST_SLEEP".into(), secs.to_string()));
        }
        return env;
    }
    let fb = fake_docker::Behaviour {
        stdout: b.stdout.clone(),
        stderr: b.stderr.clone(),
        exit_code: b.exit_code,
        duration_ms: b.duration.map(|d| d.as_millis() as u64).unwrap_or(0),
        hang: b.hang,
        oom_killed: b.oom_kill,
        flood: b.flood.map(|f| fake_docker::Flood {
            lines: f.lines,
            line_bytes: f.line_bytes,
        }),
        no_trailing_newline: b.no_trailing_newline,
        ..Default::default()
    };
    vec![(
        fake_docker::BEHAVIOUR_ENV.to_string(),
        serde_json::to_string(&fb).expect("behaviour serializes"),
    )]
}
