//! `fake-backend`: serve the fake Spacelift backend, mint pools, and drive a running one
//! through its admin API. See the crate README.

mod admin_client;
mod cli;

fn main() -> std::process::ExitCode {
    let args = <cli::Cli as clap::Parser>::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fake-backend: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-backend: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
