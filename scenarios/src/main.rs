//! `scenario run FILE... [--seed S] [--repeat N] [--mode sim|wire] [--timeline OUT]`: runs
//! scenario files and prints a trace and a verdict; on failure, the seed and the command
//! that reproduces it. The default mode is sim (see `Command::Run::mode`), wire for files
//! limited to it.
//! `scenario explore --schedules N [--seed S] [--out DIR]`: random fault schedules in sim
//! mode; each failure is shrunk and written as a scenario file with the command that
//! replays it. `scenario scale`: a large simulated pool.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
        /// `sim` (default): in-memory adapters on paused time, fast, and the same seed
        /// replays byte for byte, so a failure is reproduced exactly. `wire`: real
        /// sockets, TLS and time. A file limited to one mode runs in that one by default.
        #[arg(long)]
        mode: Option<scenarios::Mode>,
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
        /// Threads running schedules (default: one per core). Failures are shrunk in
        /// schedule order afterwards, so the outcome does not depend on it.
        #[arg(long)]
        jobs: Option<usize>,
        /// Open findings (one failure substring per line, `#` comments): schedules failing
        /// only with these are listed but do not fail the exploration.
        #[arg(long)]
        known: Option<PathBuf>,
        /// Real seconds one schedule may take; past it explore stops with the schedule's
        /// seed (a livelock: on paused time nothing else would end it).
        #[arg(long, default_value_t = 120)]
        schedule_budget: u64,
    },
    /// Print the scenario file of one explored schedule (its seed, as `explore` logs it).
    Schedule {
        seed: u64,
        #[arg(long, default_value_t = 12)]
        max_ops: usize,
    },
    /// A pool of many launchers and many runs with faults, in sim mode: virtual time to
    /// drain the queue, runs per launcher, claims refused.
    Scale {
        #[arg(long, default_value_t = 100)]
        launchers: usize,
        #[arg(long, default_value_t = 10_000)]
        runs: usize,
        #[arg(long, default_value_t = 2)]
        capacity: u32,
        /// One fault per this many runs (0: none).
        #[arg(long, default_value_t = 50)]
        fault_every: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
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
        jobs,
        known,
        schedule_budget,
    } = cli.command
    {
        let mut opts = scenarios::explore::Options::new(schedules, seed, out);
        if let Some(file) = known {
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    opts.known = text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(String::from)
                        .collect()
                }
                Err(e) => {
                    println!("error: reading {}: {e}", file.display());
                    return ExitCode::FAILURE;
                }
            }
        }
        opts.max_ops = max_ops;
        opts.shrink_budget = shrink_budget;
        let jobs = jobs.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        return explore(&opts, jobs, Duration::from_secs(schedule_budget));
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
    run(cli)
}

/// The runner owns its runtime.
fn explore(opts: &scenarios::explore::Options, jobs: usize, budget: Duration) -> ExitCode {
    let dog = scenarios::watchdog::Watchdog::start(budget, |seed, budget| {
        println!(
            "error: a schedule of seed {seed} (or a shrunk variant) still running after {}s \
             of real time: a livelock? Replay: scenario schedule {seed} > f.yaml && \
             scenario run f.yaml",
            budget.as_secs()
        );
        std::process::exit(1);
    });
    let make = || dog.guard(scenarios::explore::sim_runner());
    match scenarios::explore::explore_parallel(opts, jobs, &make, &mut std::io::stdout()) {
        Ok(summary) => {
            println!("rate: {:.2} schedules/s", summary.rate());
            if !summary.known.is_empty() {
                println!(
                    "{} more failed with known open findings only (see --known)",
                    summary.known.len()
                );
            }
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

/// Each mode builds its own runtime (sim: one current-thread runtime on paused time).
fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Explore { .. } | Command::Schedule { .. } => {
            unreachable!("handled in main")
        }
        Command::Scale {
            launchers,
            runs,
            capacity,
            fault_every,
            seed,
        } => {
            let opts = scenarios::scale::ScaleOptions {
                launchers,
                runs,
                capacity,
                fault_every,
                seed,
            };
            match scenarios::scale::run(&opts) {
                Ok(r) => {
                    println!("{r}");
                    if r.report.passed {
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
            mode,
            timeline,
        } => {
            let mut failed = 0;
            for f in &files {
                println!("scenario {}", f.display());
                let mode = mode.unwrap_or_else(|| default_mode(f));
                match scenarios::run_file_in(f, seed, repeat, mode) {
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
                            println!("  reproduce: {}", scenarios::repro_command_in(f, s, mode));
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

/// Sim unless the file runs only in wire mode (an unreadable file errors in the run).
fn default_mode(path: &std::path::Path) -> scenarios::Mode {
    match scenarios::parse::load(path) {
        Ok(s) if s.runs_in(scenarios::Mode::Sim).is_err() => scenarios::Mode::Wire,
        _ => scenarios::Mode::Sim,
    }
}
