//! The real `spacelift-launcher` binary as a subprocess.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

use crate::ui::Ui;

pub const BIN: &str = "spacelift-launcher";

/// The workspace root (this crate lives in `<root>/sandbox`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `spacelift-launcher` next to our own executable (`target/debug/`; one level up when
/// run from `target/debug/deps/`), built with cargo when missing or older than the
/// launcher's sources.
///
/// The build selects the sandbox package too: cargo unifies features over the selected
/// packages, so this build then reuses every dependency `cargo run -p sandbox` compiled
/// (the sandbox depends on the launcher's library for that) and compiles only the binary.
pub fn locate_or_build(ui: &Ui) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the sandbox executable")?;
    let dir = exe
        .parent()
        .context("the sandbox executable has no directory")?;
    let mut candidates = vec![dir.join(BIN)];
    if dir.file_name().is_some_and(|n| n == "deps") {
        if let Some(up) = dir.parent() {
            candidates.insert(0, up.join(BIN));
        }
    }
    let found = candidates.iter().find(|p| p.is_file()).cloned();
    let why = match &found {
        Some(bin) => match stale(bin) {
            None => return Ok(bin.clone()),
            Some(src) => format!(
                "{} is older than {}; rebuilding it",
                bin.display(),
                src.display()
            ),
        },
        None => format!("{BIN} not found next to {}; building it", exe.display()),
    };
    ui.line(format!(
        "{why}: cargo build -p sandbox -p spacelift-launcher --bin {BIN}"
    ));
    let cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("cargo"));
    let mut build = std::process::Command::new(&cargo);
    // Under `cargo run` we inherit the sandbox package's CARGO_MANIFEST_DIR, CARGO_PKG_*...;
    // some build scripts (ring's) rerun when those change, so this build and the next
    // `cargo run` would recompile each other's crates.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if set_by_cargo_run(&k) {
            build.env_remove(k.as_ref());
        }
    }
    let status = build
        .args([
            "build",
            "-p",
            "sandbox",
            "-p",
            "spacelift-launcher",
            "--bin",
            BIN,
        ])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {}", cargo.display()))?;
    if !status.success() {
        bail!("cargo build -p spacelift-launcher failed ({status})");
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "built {BIN}, but it is not next to {} (is CARGO_TARGET_DIR set differently?); \
                 pass --launcher PATH",
                exe.display()
            )
        })
}

/// The variables `cargo run` sets for the program it runs, as opposed to cargo's own
/// configuration (CARGO_TARGET_DIR, CARGO_HOME, CARGO_BUILD_*...), which must pass through.
fn set_by_cargo_run(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_MANIFEST_")
        || matches!(
            name,
            "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE" | "OUT_DIR"
        )
}

/// A launcher (or protocol) source file newer than the binary, if any.
fn stale(bin: &Path) -> Option<PathBuf> {
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok()?;
    let root = workspace_root();
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for sub in [
        "launcher/src",
        "protocol/src",
        "launcher/Cargo.toml",
        "protocol/Cargo.toml",
    ] {
        visit(&root.join(sub), &mut newest);
    }
    newest.filter(|(t, _)| *t > built).map(|(_, p)| p)
}

fn visit(path: &Path, newest: &mut Option<(SystemTime, PathBuf)>) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                visit(&e.path(), newest);
            }
        }
    } else if let Ok(t) = meta.modified() {
        if newest.as_ref().is_none_or(|(n, _)| t > *n) {
            *newest = Some((t, path.to_path_buf()));
        }
    }
}

pub struct LauncherProcess {
    pub child: Child,
    pub pid: u32,
    pub log: PathBuf,
}

impl LauncherProcess {
    /// Starts the binary with exactly `env` for its `SPACELIFT_*`/`DOCKER_HOST` settings
    /// (inherited ones are removed), stdout and stderr appended to `log`, in its own
    /// process group so a Ctrl-C on the terminal reaches only the sandbox, which then
    /// stops the launcher with one SIGTERM.
    pub fn spawn(bin: &Path, env: &[(String, String)], log: &Path) -> Result<LauncherProcess> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("SPACELIFT_") || k == "DOCKER_HOST" {
                cmd.env_remove(k.as_ref());
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("cloning the log file handle")?)
            .stderr(file)
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("the launcher exited at once")?;
        Ok(LauncherProcess {
            child,
            pid,
            log: log.to_path_buf(),
        })
    }

    /// SIGTERM (the launcher drains, then exits), then waits up to `grace`; SIGKILL after.
    pub async fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        send_signal(self.pid, libc::SIGTERM);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.start_kill()?;
                Ok(self.child.wait().await?)
            }
        }
    }

    /// The last lines of the launcher's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

fn send_signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped: `child` is
    // only waited on after this call), so it cannot name a recycled process.
    unsafe {
        libc::kill(pid, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::set_by_cargo_run;

    #[test]
    fn only_the_run_package_variables_are_dropped_from_the_build() {
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
        ] {
            assert!(set_by_cargo_run(name), "{name}");
        }
        for name in [
            "CARGO",
            "CARGO_TARGET_DIR",
            "CARGO_HOME",
            "CARGO_BUILD_JOBS",
            "CARGO_PROFILE_DEV_OPT_LEVEL",
            "RUSTFLAGS",
            "PATH",
        ] {
            assert!(!set_by_cargo_run(name), "{name}");
        }
    }
}
