//! `scenario run FILE... [--seed S] [--repeat N] [--timeline OUT]`: runs scenario files and
//! prints a trace and a verdict; on failure, the seed and the command that reproduces it.
//! `scenario explore --schedules N [--seed S] [--out DIR]`: random fault schedules; each
//! failure is shrunk and written as a scenario file with the command that replays it.

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
    /// Run random fault schedules; ends with `explored N schedules: K failed`.
    Explore {
        #[arg(long)]
        schedules: u64,
        /// Derives every schedule's seed (the same seed explores the same schedules).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where failing schedules are written as scenario files.
        #[arg(long, default_value = "target/explore")]
        out: PathBuf,
        /// Ops per schedule, at most.
        #[arg(long, default_value_t = 12)]
        max_ops: usize,
        /// Runs spent shrinking one failure, at most.
        #[arg(long, default_value_t = 200)]
        shrink_budget: usize,
    },
    /// Print the scenario file of one explored schedule (its seed, as `explore` logs it).
    Schedule {
        seed: u64,
        #[arg(long, default_value_t = 12)]
        max_ops: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .init();
    }
    if let Command::Explore {
        schedules,
        seed,
        out,
        max_ops,
        shrink_budget,
    } = cli.command
    {
        let mut opts = scenarios::explore::Options::new(schedules, seed, out);
        opts.max_ops = max_ops;
        opts.shrink_budget = shrink_budget;
        return explore(&opts);
    }
    if let Command::Schedule { seed, max_ops } = cli.command {
        let s = scenarios::random::Schedule::generate(seed, max_ops).scenario();
        return match serde_yaml::to_string(&s) {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    tokio::runtime::Runtime::new()
        .expect("a tokio runtime")
        .block_on(run(cli))
}

/// Explores outside any runtime: the runner owns its own.
fn explore(opts: &scenarios::explore::Options) -> ExitCode {
    let mut runner = scenarios::explore::wire_runner();
    match scenarios::explore::explore(opts, &mut runner, &mut std::io::stdout()) {
        Ok(summary) => {
            println!("rate: {:.2} schedules/s", summary.rate());
            println!("{}", summary.line());
            if summary.found.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            println!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Explore { .. } | Command::Schedule { .. } => {
            unreachable!("handled before the runtime starts")
        }
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
