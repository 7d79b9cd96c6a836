//! `scenario run FILE... [--seed S] [--repeat N] [--timeline OUT]`: runs scenario files and
//! prints a trace and a verdict; on failure, the seed and the command that reproduces it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "scenario", about = "Run launcher scenarios against the fakes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenario files.
    Run {
        files: Vec<PathBuf>,
        /// Override the file's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Run each file this many times and check the repeats agree.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Write each execution's timeline (HTML): to OUT for one file, else OUT/<case>.html.
        #[arg(long, value_name = "OUT")]
        timeline: Option<PathBuf>,
    },
    /// Parse scenario files and report errors, without running them.
    Check { files: Vec<PathBuf> },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .init();
    }
    match cli.command {
        Command::Check { files } => {
            let mut ok = true;
            for f in files {
                match scenarios::parse::load(&f) {
                    Ok(_) => println!("{}: ok", f.display()),
                    Err(e) => {
                        ok = false;
                        println!("{e}");
                    }
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Run {
            files,
            seed,
            repeat,
            timeline,
        } => {
            let mut failed = 0;
            for f in &files {
                println!("scenario {}", f.display());
                match scenarios::run_file(f, seed, repeat).await {
                    Ok(outcome) if outcome.skipped.is_some() => {
                        println!("  skipped: {}", outcome.skipped.unwrap_or_default());
                    }
                    Ok(outcome) => {
                        for (i, r) in outcome.reports.iter().enumerate() {
                            if outcome.reports.len() > 1 {
                                println!(" repeat {}", i + 1);
                            }
                            println!("{r}");
                        }
                        if let Some(out) = &timeline {
                            let path = scenarios::timeline::output_path(out, f, files.len());
                            // The first failing repeat, else the first.
                            let shown = outcome.reports.iter().find(|r| !r.passed);
                            if let Some(r) = shown.or(outcome.reports.first()) {
                                match scenarios::timeline::write(r, &path) {
                                    Ok(()) => println!("  timeline: {}", path.display()),
                                    Err(e) => println!("  timeline not written: {e}"),
                                }
                            }
                        }
                        if let Some(n) = &outcome.nondeterminism {
                            println!("  ! NONDETERMINISTIC: {n}");
                        }
                        if !outcome.passed() {
                            failed += 1;
                            let s = outcome.reports.first().map(|r| r.seed).unwrap_or(0);
                            println!("  reproduce: {}", scenarios::repro_command(f, s));
                            if timeline.is_none() {
                                let f = f.display();
                                println!("  see it:    scripts/timeline.sh {f} --seed {s}");
                            }
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        println!("  error: {e}");
                    }
                }
            }
            println!("{} passed, {} failed", files.len() - failed, failed);
            if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
