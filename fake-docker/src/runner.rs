//! Starting containers and playing their behaviour on tokio's clock.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::behaviour::{elf_arch, exec_format_error_line, Behaviour};
use crate::error::{ApiError, ApiResult};
use crate::state::{Daemon, Runner, Status};

/// Starts a container. `Ok(false)` means it was already running (HTTP 304).
pub async fn start(daemon: &Arc<Daemon>, given: &str) -> ApiResult<bool> {
    // Gather what we need, then read the entrypoint binary without holding the lock.
    let (id, path, image_arch, entry_source) = {
        let st = daemon.lock();
        let id = Daemon::resolve_container(&st, given)?;
        let Some(c) = st.containers.get(&id) else {
            return Err(ApiError::no_such_container(given));
        };
        if c.running() {
            return Ok(false);
        }
        let entry_source = c
            .mounts
            .iter()
            .find(|m| m.kind == "bind" && m.target == c.path)
            .map(|m| m.source.clone());
        (
            id,
            c.path.clone(),
            c.platform.architecture.clone(),
            entry_source,
        )
    };
    let mut foreign = image_arch != daemon.config.arch;
    if let Some(src) = entry_source {
        if let Some(arch) = read_elf_arch(&src).await {
            // The bind-mounted binary is what actually runs: its header decides.
            foreign = arch != daemon.config.arch;
        }
    }

    let mut st = daemon.lock();
    let behaviour = {
        let Some(c) = st.containers.get(&id) else {
            return Err(ApiError::no_such_container(given));
        };
        if c.running() {
            return Ok(false);
        }
        let mut b = Daemon::subject_behaviour(&st, c);
        if foreign || b.exec_format_error {
            // runc reports the PATH-resolved binary; busybox-style images keep it in /bin.
            let shown = if path.contains('/') {
                path.clone()
            } else {
                format!("/bin/{path}")
            };
            b = Behaviour {
                stderr: vec![exec_format_error_line(&shown)],
                exit_code: daemon.config.exec_format_exit_code,
                ..Behaviour::default()
            };
        }
        b
    };
    if let Some(msg) = behaviour.start_error.clone() {
        let code = if msg.contains("executable file not found")
            || msg.contains("no such file or directory")
        {
            127
        } else if msg.contains("permission denied") {
            126
        } else {
            128
        };
        let now = daemon.clock.now();
        let auto_remove = if let Some(c) = st.containers.get_mut(&id) {
            c.error = msg.clone();
            c.exit_code = code;
            c.finished_at = Some(now);
            c.auto_remove
        } else {
            false
        };
        daemon.container_event(&mut st, &id, "die", &[("exitCode", code.to_string())]);
        if auto_remove {
            daemon.remove_locked(&mut st, &id);
        }
        daemon.notify();
        return Err(ApiError::bad_request(msg));
    }

    let now = daemon.clock.now();
    st.next_pid += 1;
    let pid = st.next_pid;
    let Some(c) = st.containers.get_mut(&id) else {
        return Err(ApiError::no_such_container(given));
    };
    c.run_gen += 1;
    let gen = c.run_gen;
    c.status = Status::Running;
    c.pid = pid;
    c.started_at = Some(now);
    c.exit_code = 0;
    c.oom_killed = false;
    c.error.clear();
    c.output.lock().unwrap_or_else(|e| e.into_inner()).closed = false;
    let handle = tokio::spawn(play(daemon.clone(), id.clone(), gen, behaviour.clone()));
    c.runner = Some(Runner {
        handle,
        ignore_signals: behaviour.ignore_sigterm,
    });
    daemon.container_event(&mut st, &id, "start", &[]);
    Ok(true)
}

async fn read_elf_arch(path: &str) -> Option<&'static str> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path).await.ok()?;
    let mut buf = [0u8; 20];
    f.read_exact(&mut buf).await.ok()?;
    elf_arch(&buf)
}

/// Plays a behaviour: output lines, then the duration, then the exit (or hangs).
async fn play(daemon: Arc<Daemon>, id: String, gen: u64, b: Behaviour) {
    // Let the start reply and attach streams go out before the first output.
    tokio::task::yield_now().await;
    for line in b.output() {
        if line.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(line.delay_ms)).await;
        }
        let mut text = line.text;
        text.push('\n');
        daemon.append_output(&id, gen, line.stream, Bytes::from(text));
    }
    if b.duration_ms > 0 {
        tokio::time::sleep(Duration::from_millis(b.duration_ms)).await;
    }
    if b.hang {
        std::future::pending::<()>().await;
    }
    let code = if b.oom_killed { 137 } else { b.exit_code };
    daemon.exit(&id, gen, code, b.oom_killed);
}

/// Signal numbers dockerd accepts by name or number.
pub fn parse_signal(s: &str) -> Option<i64> {
    if s.is_empty() {
        return Some(9);
    }
    if let Ok(n) = s.parse::<i64>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ABRT" => 6,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        "CONT" => 18,
        "STOP" => 19,
        "WINCH" => 28,
        _ => return None,
    })
}

/// Stops a container: SIGTERM, then SIGKILL after `t` seconds. `Ok(false)` = already stopped.
pub async fn stop(daemon: &Arc<Daemon>, given: &str, t: Option<i64>) -> ApiResult<bool> {
    let mut changes = daemon.changes.subscribe();
    let (id, exits) = {
        let mut st = daemon.lock();
        let id = Daemon::resolve_container(&st, given)?;
        let Some(c) = st.containers.get(&id) else {
            return Err(ApiError::no_such_container(given));
        };
        if !c.running() {
            return Ok(false);
        }
        let exits = c.exits;
        daemon.signal_locked(&mut st, &id, 15);
        (id, exits)
    };
    let exited = |daemon: &Daemon| {
        let st = daemon.lock();
        st.containers.get(&id).is_none_or(|c| c.exits > exits)
    };
    let grace = Duration::from_secs(u64::try_from(t.unwrap_or(10)).unwrap_or(0));
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        changes.borrow_and_update();
        if exited(daemon) {
            return Ok(true);
        }
        tokio::select! {
            _ = &mut deadline => break,
            r = changes.changed() => if r.is_err() { break },
        }
    }
    let mut st = daemon.lock();
    daemon.signal_locked(&mut st, &id, 9);
    Ok(true)
}
