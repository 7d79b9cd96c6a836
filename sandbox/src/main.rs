//! `cargo run -p sandbox`: the fake backend and a fake Docker daemon in this process, the
//! real `spacelift-launcher` binary as a subprocess, and a few demo runs with live
//! progress and a summary. `--keep` leaves it all running for the `fake-backend` and
//! `docker` CLIs until Ctrl-C.

mod cli;
mod demo;
mod docker_side;
mod launcher_proc;
mod setup;
mod signals;
mod summary;
mod ui;

use std::process::ExitCode;

use clap::Parser;

use cli::Cli;

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
    match runtime.block_on(setup::run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sandbox: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
