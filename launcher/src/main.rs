//! `spacelift-launcher`: reads its configuration from the environment (as Spacelift's
//! docs describe), then serves runs until drained, cycled or signalled out.
//!
//! Exit codes: 0 drained or cycled; 1 runs canceled by a second signal, a third signal,
//! or a runtime failure (bad credentials, Docker unreachable); 2 bad configuration
//! (before any connection is made).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use launcher::config::{self, Overrides, ProcessEnv};
use launcher::logging::{self, Style, Terminals};
use launcher::Signal;
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(
    name = "spacelift-launcher",
    version,
    about = "Spacelift-compatible worker-pool launcher: runs Spacelift runs in Docker containers",
    after_long_help = config::env_help(),
    after_help = "Configuration comes from environment variables; see --help for the list."
)]
struct Cli {
    /// Runs taken at once (overrides SPACELIFT_LAUNCHER_CAPACITY; default 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    capacity: Option<u32>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        capacity: cli.capacity,
    };
    // Validate everything, then act (read the policy file); both exit 2 before connecting.
    let config = match config::load_with(&ProcessEnv, &overrides).and_then(|c| c.prepare()) {
        Ok(c) => c,
        Err(e) => {
            // In the format the launcher's other lines would have had.
            let raw = std::env::var(config::vars::LOG_FORMAT.name).ok();
            let style = Style::before_config(raw.as_deref(), Terminals::of_process());
            logging::last_word(style, &format!("configuration error: {e}"));
            return ExitCode::from(2);
        }
    };
    let style = logging::init(&logging::LogOptions::from_process(
        config.log_format,
        config.settings.debug,
    ));
    match serve(config, style) {
        Ok(code) => code,
        Err(e) => {
            logging::last_word(style, &format!("{e:#}"));
            ExitCode::from(1)
        }
    }
}

fn serve(config: config::LauncherConfig, style: Style) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let (tx, rx) = mpsc::channel(8);
        forward_signals(tx, style).context("installing signal handlers")?;
        let outcome = launcher::app::run(config, rx).await?;
        tracing::info!(?outcome, "launcher stopped");
        Ok(ExitCode::from(outcome.exit_code() as u8))
    })
}

/// Maps SIGTERM/SIGINT onto the supervisor's signal stages. The third one also exits from
/// here, so it works even while startup (Docker, registration) is still retrying.
fn forward_signals(tx: mpsc::Sender<Signal>, style: Style) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let mut count = 0u32;
        loop {
            let s = tokio::select! {
                _ = term.recv() => Signal::Terminate,
                _ = int.recv() => Signal::Interrupt,
            };
            count += 1;
            if count >= 3 {
                logging::last_word(style, "third signal, exiting now");
                std::process::exit(1);
            }
            let _ = tx.try_send(s);
        }
    });
    Ok(())
}
