//! Starting containers and playing their behaviour on tokio's clock.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::behaviour::{elf_arch, exec_format_error_line, Behaviour, Line, Stream};
use crate::error::{ApiError, ApiResult};
use crate::state::{Container, Daemon, Runner, State, Status};

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
    let refusal = st
        .containers
        .get(&id)
        .and_then(|c| runtime_refusal(&st, c, daemon.config.legacy_messages()))
        .or_else(|| behaviour.start_error.clone().map(ApiError::bad_request));
    if let Some(refused) = refusal {
        let msg = refused.message.clone();
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
        return Err(refused);
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
    c.output
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .set_closed(false);
    let handle = tokio::spawn(play(daemon.clone(), id.clone(), gen, behaviour.clone()));
    c.runner = Some(Runner {
        handle,
        ignore_signals: behaviour.ignore_sigterm,
    });
    daemon.container_event(&mut st, &id, "start", &[]);
    Ok(true)
}

/// What the daemon or runc refuses at start, before the process runs: a network that does
/// not exist, a `User` the image does not know, or a command the image lacks (only when
/// the image lists its `files`).
fn runtime_refusal(st: &State, c: &Container, legacy: bool) -> Option<ApiError> {
    let mode = c.network_mode.as_str();
    let builtin = ["default", "bridge", "host", "none"].contains(&mode);
    if !builtin && !mode.starts_with("container:") && Daemon::find_network(st, mode).is_none() {
        return Some(ApiError::not_found(format!("network {mode} not found")));
    }
    let config = &st.images.iter().find(|i| i.id == c.image_id)?.config;
    if let Some(refused) = unknown_user(c, config) {
        return Some(refused);
    }
    let files = &config.files;
    let path = c.path.as_str();
    let mounted = |p: &str| {
        c.mounts
            .iter()
            .any(|m| p == m.target || p.starts_with(&format!("{}/", m.target)))
    };
    if files.is_empty() || mounted(path) {
        return None;
    }
    let problem = if path.contains('/') {
        let found = files.iter().any(|f| f == path);
        (!found).then(|| format!("stat {path}: no such file or directory"))
    } else {
        let search = c
            .env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("");
        let found = search.split(':').any(|dir| {
            let candidate = format!("{}/{path}", dir.trim_end_matches('/'));
            files.contains(&candidate) || mounted(&candidate)
        });
        (!found).then(|| "executable file not found in $PATH".to_string())
    }?;
    // runc 1.1 under containerd 1.6 (dockerd 20.10) vs. runc 1.2 under Docker 28.
    let context = if legacy {
        "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process"
    } else {
        "failed to create task for container: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init"
    };
    Some(ApiError::bad_request(format!(
        "{context}: exec: \"{path}\": {problem}: unknown"
    )))
}

/// dockerd resolves `User` (`name|uid[:group|gid]`) in the image's `/etc/passwd` and
/// `/etc/group` while building the container's spec: an unknown name fails the start.
fn unknown_user(c: &Container, config: &crate::registry::ImageConfig) -> Option<ApiError> {
    let user = c.config.get("User").and_then(|u| u.as_str()).unwrap_or("");
    let (name, group) = match user.split_once(':') {
        Some((n, g)) => (n, Some(g)),
        None => (user, None),
    };
    let known = |n: &str, list: &[String]| {
        n.is_empty() || n == "root" || n.parse::<u32>().is_ok() || list.iter().any(|k| k == n)
    };
    if !known(name, &config.users) {
        return Some(ApiError::internal(format!(
            "unable to find user {name}: no matching entries in passwd file"
        )));
    }
    match group {
        Some(g) if !known(g, &config.groups) => Some(ApiError::internal(format!(
            "unable to find group {g}: no matching entries in group file"
        ))),
        _ => None,
    }
}

/// A 20-byte read, done in place: through tokio's blocking pool, a simulated daemon's
/// schedule would depend on when an OS thread finishes.
async fn read_elf_arch(path: &str) -> Option<&'static str> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut buf = [0u8; 20];
    f.read_exact(&mut buf).ok()?;
    elf_arch(&buf)
}

/// Plays a behaviour: output lines, then the duration, then the exit (or hangs).
async fn play(daemon: Arc<Daemon>, id: String, gen: u64, b: Behaviour) {
    // Let the start reply and attach streams go out before the first output.
    tokio::task::yield_now().await;
    let lines = b.output();
    let flood = b.flood.unwrap_or_default();
    let total = lines.len() + flood.lines as usize;
    let flooded = (0..flood.lines).map(|i| Line {
        stream: Stream::Stdout,
        text: flood.line(i),
        delay_ms: 0,
    });
    for (n, line) in lines.into_iter().chain(flooded).enumerate() {
        if line.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(line.delay_ms)).await;
        }
        let mut text = line.text;
        if !(b.no_trailing_newline && n + 1 == total) {
            text.push('\n');
        }
        daemon.append_output(&id, gen, line.stream, Bytes::from(text));
        if n % 256 == 255 {
            // A flood must not starve the streams reading it.
            tokio::task::yield_now().await;
        }
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

/// Linux signal names as moby's `signal.SignalMap` spells them (`RTMIN+n`/`RTMAX-n` aside).
const SIGNALS: &[(&str, i64)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("POLL", 29),
    ("PWR", 30),
    ("SYS", 31),
    ("RTMIN", 34),
    ("RTMAX", 64),
];

/// A signal as dockerd parses it: a name, or any non-zero number (whether Linux has that
/// signal is checked later, see [`linux_signal`]). Empty means SIGKILL.
pub fn parse_signal(s: &str) -> Option<i64> {
    if s.is_empty() {
        return Some(9);
    }
    if let Ok(n) = s.parse::<i64>() {
        return (n != 0).then_some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    if let Some(n) = name
        .strip_prefix("RTMIN+")
        .and_then(|n| n.parse::<i64>().ok())
    {
        return (1..=15).contains(&n).then_some(34 + n);
    }
    if let Some(n) = name
        .strip_prefix("RTMAX-")
        .and_then(|n| n.parse::<i64>().ok())
    {
        return (1..=14).contains(&n).then_some(64 - n);
    }
    SIGNALS.iter().find(|(k, _)| *k == name).map(|(_, n)| *n)
}

/// Whether Linux has signal `n` (32 and 33 belong to the C library, so dockerd refuses them).
pub fn linux_signal(n: i64) -> bool {
    (1..=31).contains(&n) || (34..=64).contains(&n)
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
