//! The sandbox's command line: its flags, apart from the code that acts on them.

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "sandbox",
    about = "Fake backend + fake Docker daemon + the real spacelift-launcher, with demo runs"
)]
pub struct Cli {
    /// Leave everything running after the demo (for the fake-backend and docker CLIs),
    /// until Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// Plain timestamped lines instead of progress bars (also the default when stderr is
    /// not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Use the in-process fake Docker daemon even when DOCKER_HOST is set.
    #[arg(long)]
    pub fake_docker: bool,
    /// Where the backend, the launcher and the Docker socket keep their files (default:
    /// `.sandbox` in the repository root). Its `backend/` and `launcher/` subdirectories
    /// and `docker.sock`/`launcher.log` are replaced.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// The launcher binary (default: spacelift-launcher next to this executable, built
    /// with cargo when missing or stale).
    #[arg(long, value_name = "PATH", env = "SANDBOX_LAUNCHER_BIN")]
    pub launcher: Option<PathBuf>,
}
