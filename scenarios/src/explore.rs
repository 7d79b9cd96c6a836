//! `scenario explore`: runs many random schedules, each from its own seed derived from one
//! seed, through an injected [`Runner`]; shrinks each failure and writes it as a scenario
//! file that `scenario run` replays.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::ScenarioError;
use crate::model::Scenario;
use crate::random::Schedule;
use crate::report::Report;
use crate::shrink::{shrink, Budget};

/// Runs one scenario with one seed: wire mode ([`wire_runner`]), sim mode, or a test's fake.
pub type Runner<'r> = dyn FnMut(&Scenario, u64) -> Result<Report, ScenarioError> + 'r;

/// Today's runner: the wire-mode engine, one runtime for all schedules.
/// Sim mode: the launcher's core on virtual time, one seed per schedule (what `scenario
/// explore` uses).
pub fn sim_runner() -> Box<Runner<'static>> {
    Box::new(crate::execute_sim)
}

/// Wire mode: real sockets and real time, seconds per schedule (for comparing modes).
pub fn wire_runner() -> impl FnMut(&Scenario, u64) -> Result<Report, ScenarioError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    move |scenario, seed| rt.block_on(crate::engine::execute(scenario, seed))
}

#[derive(Debug, Clone)]
pub struct Options {
    pub schedules: u64,
    pub seed: u64,
    /// Where failing schedules are written.
    pub out: PathBuf,
    /// Ops per schedule, at most.
    pub max_ops: usize,
    /// Runs spent shrinking one failure, at most.
    pub shrink_budget: usize,
    /// Failures shrunk (the rest are written as found).
    pub max_shrunk: usize,
    /// Open findings not yet fixed (`scenarios/known-findings.txt`): a schedule with a
    /// failure containing one of these is counted apart, not shrunk, and fails nothing.
    pub known: Vec<String>,
}

impl Options {
    pub fn new(schedules: u64, seed: u64, out: PathBuf) -> Options {
        Options {
            schedules,
            seed,
            out,
            max_ops: 12,
            shrink_budget: 200,
            max_shrunk: 3,
            known: Vec::new(),
        }
    }
}

/// One failing schedule, shrunk and written.
#[derive(Debug, Clone)]
pub struct Found {
    pub original: Schedule,
    pub shrunk: Schedule,
    /// The shrunk schedule's failures.
    pub failures: Vec<String>,
    pub file: PathBuf,
    /// The command that replays `file`.
    pub replay: String,
}

#[derive(Debug)]
pub struct Summary {
    pub explored: u64,
    pub found: Vec<Found>,
    /// Schedules that failed only with known open findings: (schedule seed, failure).
    pub known: Vec<(u64, String)>,
    pub elapsed: Duration,
    /// Of `elapsed`, the time spent shrinking failures.
    pub shrinking: Duration,
}

impl Summary {
    /// The last line `scenario explore` prints.
    pub fn line(&self) -> String {
        format!(
            "explored {} schedules: {} failed",
            self.explored,
            self.found.len()
        )
    }

    /// Schedules explored per second, shrinking aside.
    pub fn rate(&self) -> f64 {
        let exploring = self.elapsed.saturating_sub(self.shrinking);
        self.explored as f64 / exploring.as_secs_f64().max(1e-9)
    }
}

/// The seeds of the first `n` schedules explored from `seed` (a longer run extends a
/// shorter one's list).
pub fn schedule_seeds(seed: u64, n: u64) -> impl Iterator<Item = u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(move |_| rng.next_u64())
}

/// Whether a verdict is a failure (a harness error is one too: the schedule broke it).
fn failed(v: &Result<Report, ScenarioError>) -> bool {
    !matches!(v, Ok(r) if r.passed)
}

fn failures_of(v: &Result<Report, ScenarioError>) -> Vec<String> {
    match v {
        Ok(r) => r.failures.clone(),
        Err(e) => vec![e.to_string()],
    }
}

/// A failure message without its numbers and names with digits (run names, ULIDs, counts
/// change as a schedule shrinks), so a shrink keeps the same failure instead of drifting to
/// another one.
pub fn signature(failure: &str) -> String {
    failure
        .split_whitespace()
        .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `v` fails with the failure `sig` names.
fn fails_as(v: &Result<Report, ScenarioError>, sig: &str) -> bool {
    failed(v) && failures_of(v).iter().any(|f| signature(f) == sig)
}

fn run(runner: &mut Runner<'_>, s: &Schedule) -> Result<Report, ScenarioError> {
    let scenario = s.scenario();
    runner(&scenario, scenario.seed)
}

/// Explores `opts.schedules` schedules one after another; progress and failures go to
/// `log`.
pub fn explore(
    opts: &Options,
    runner: &mut Runner<'_>,
    log: &mut dyn Write,
) -> Result<Summary, ScenarioError> {
    let started = Instant::now();
    let mut failing = Vec::new();
    let every = progress_every(opts);
    for (i, seed) in schedule_seeds(opts.seed, opts.schedules).enumerate() {
        let schedule = Schedule::generate(seed, opts.max_ops);
        let verdict = run(runner, &schedule);
        let explored = i as u64 + 1;
        if explored.is_multiple_of(every) && explored < opts.schedules {
            let _ = writeln!(
                log,
                "{explored}/{} schedules, {} failed",
                opts.schedules,
                failing.len()
            );
        }
        if failed(&verdict) {
            failing.push((explored, schedule, verdict));
        }
    }
    finish(opts, runner, failing, started, log)
}

/// Makes one runner per thread (a sim runner owns its runtime and world).
pub type RunnerFactory<'f> = dyn Fn() -> Box<Runner<'static>> + Sync + 'f;

/// As [`explore`], with the schedules spread over `jobs` threads; the failures are then
/// shrunk one after another, in schedule order, so the outcome is the sequential one.
pub fn explore_parallel(
    opts: &Options,
    jobs: usize,
    make_runner: &RunnerFactory<'_>,
    log: &mut (dyn Write + Send),
) -> Result<Summary, ScenarioError> {
    if jobs <= 1 {
        return explore(opts, &mut *make_runner(), log);
    }
    let started = Instant::now();
    let seeds: Vec<u64> = schedule_seeds(opts.seed, opts.schedules).collect();
    let next = AtomicUsize::new(0);
    let explored = AtomicU64::new(0);
    let failing = Mutex::new(Vec::new());
    let every = progress_every(opts);
    let shared_log = Mutex::new(&mut *log);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                let mut runner = make_runner();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&seed) = seeds.get(i) else { break };
                    let schedule = Schedule::generate(seed, opts.max_ops);
                    let verdict = run(&mut *runner, &schedule);
                    let mut failing = lock(&failing);
                    if failed(&verdict) {
                        failing.push((i as u64 + 1, schedule, verdict));
                    }
                    let n = explored.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_multiple_of(every) && n < opts.schedules {
                        let _ = writeln!(
                            lock(&shared_log),
                            "{n}/{} schedules, {} failed",
                            opts.schedules,
                            failing.len()
                        );
                    }
                }
            });
        }
    });
    let mut failing = failing.into_inner().unwrap_or_else(|p| p.into_inner());
    failing.sort_by_key(|(n, _, _)| *n);
    finish(opts, &mut *make_runner(), failing, started, log)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// About twenty progress lines per exploration.
fn progress_every(opts: &Options) -> u64 {
    opts.schedules.div_ceil(20).max(1)
}

/// Shrinks (up to `opts.max_shrunk`) and writes every failing schedule, in order.
fn finish(
    opts: &Options,
    runner: &mut Runner<'_>,
    failing: Vec<(u64, Schedule, Result<Report, ScenarioError>)>,
    started: Instant,
    log: &mut dyn Write,
) -> Result<Summary, ScenarioError> {
    let mut found = Vec::new();
    let mut known = Vec::new();
    let mut shrinking = Duration::ZERO;
    for (explored, schedule, verdict) in failing {
        let failures = failures_of(&verdict);
        if !opts.known.is_empty()
            && failures
                .iter()
                .any(|f| opts.known.iter().any(|k| f.contains(k.as_str())))
        {
            // Its other failures are usually that finding's consequences (a stuck run
            // also misses its expected state).
            let first = failures
                .iter()
                .find(|f| opts.known.iter().any(|k| f.contains(k.as_str())))
                .cloned()
                .unwrap_or_default();
            let _ = writeln!(
                log,
                "schedule {explored} (seed {}) failed with a known open finding: {first}",
                schedule.seed
            );
            known.push((schedule.seed, first));
            continue;
        }
        let _ = writeln!(
            log,
            "schedule {explored} (seed {}, {} ops) failed: {:?}",
            schedule.seed,
            schedule.ops.len(),
            failures_of(&verdict)
        );
        let shrink_started = Instant::now();
        let (shrunk, verdict) = if found.len() < opts.max_shrunk {
            let mut budget = Budget(opts.shrink_budget);
            let sig = signature(failures_of(&verdict).first().map_or("", String::as_str));
            let shrunk = shrink(&schedule, &mut budget, &mut |s| {
                fails_as(&run(runner, s), &sig)
            });
            // The shrunk schedule's own verdict, for its file and timeline.
            let v = run(runner, &shrunk);
            if failed(&v) {
                (shrunk, v)
            } else {
                (schedule.clone(), verdict)
            }
        } else {
            (schedule.clone(), verdict)
        };
        shrinking += shrink_started.elapsed();
        let f = write_failure(&opts.out, &schedule, &shrunk, &verdict)?;
        let _ = writeln!(
            log,
            "  shrunk to {} ops: {}\n  replay: {}\n  timeline: {}",
            f.shrunk.ops.len(),
            f.file.display(),
            f.replay,
            f.file.with_extension("html").display()
        );
        found.push(f);
    }
    Ok(Summary {
        explored: opts.schedules,
        found,
        known,
        elapsed: started.elapsed(),
        shrinking,
    })
}

fn write_failure(
    out: &Path,
    original: &Schedule,
    shrunk: &Schedule,
    verdict: &Result<Report, ScenarioError>,
) -> Result<Found, ScenarioError> {
    let io = |file: &Path, source| ScenarioError::Io {
        file: file.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let file = out.join(format!("schedule-{}.yaml", original.seed));
    let mut scenario = shrunk.scenario();
    scenario.description = format!(
        "found by scenario explore: schedule seed {}, shrunk from {} ops to {}",
        original.seed,
        original.ops.len(),
        shrunk.ops.len()
    );
    let failures = failures_of(verdict);
    let mut text = String::from("# Failures when found:\n");
    for f in &failures {
        text.push_str(&format!("#   {}\n", f.replace('\n', " ")));
    }
    text.push_str(
        &serde_yaml::to_string(&scenario)
            .map_err(|e| ScenarioError::Harness(format!("writing {}: {e}", file.display())))?,
    );
    std::fs::write(&file, text).map_err(|e| io(&file, e))?;
    if let Ok(report) = verdict {
        write_timeline(report, &file);
    }
    Ok(Found {
        original: original.clone(),
        shrunk: shrunk.clone(),
        failures,
        replay: crate::repro_command(&file, scenario.seed),
        file,
    })
}

/// The failing execution's timeline, next to its scenario file. Losing it loses no
/// failure (the scenario file replays it), so an error is only reported.
fn write_timeline(report: &Report, scenario_file: &Path) {
    let page = scenario_file.with_extension("html");
    if let Err(e) = crate::timeline::write(report, &page) {
        tracing::warn!(error = %e, "timeline not written");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Step;
    use crate::random::{Image, Op, Output};
    use crate::report::Trace;

    /// A planted bug: any schedule where a cancel follows a launcher crash fails.
    fn cancel_after_crash(s: &Scenario, seed: u64) -> Result<Report, ScenarioError> {
        let steps: Vec<&Step> = s.phases.iter().flat_map(|p| &p.steps).collect();
        let crash = steps
            .iter()
            .position(|s| matches!(s, Step::CrashLauncher { .. }));
        let bug =
            crash.is_some_and(|c| steps[c..].iter().any(|s| matches!(s, Step::Cancel { .. })));
        let failures = if bug {
            vec!["run r1: canceled after a crash and lost".to_string()]
        } else {
            Vec::new()
        };
        Ok(Report {
            seed,
            mode: crate::Mode::Sim,
            full: Vec::new(),
            passed: failures.is_empty(),
            failures,
            trace: Trace::default(),
        })
    }

    fn options(dir: &Path) -> Options {
        Options::new(300, 42, dir.to_path_buf())
    }

    #[test]
    fn finds_a_planted_failure_and_shrinks_it_to_the_minimal_ops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = Vec::new();
        let summary =
            explore(&options(dir.path()), &mut cancel_after_crash, &mut log).expect("explores");
        assert_eq!(summary.explored, 300);
        assert!(!summary.found.is_empty(), "the planted bug was not found");
        assert!(
            summary.line().starts_with("explored 300 schedules: ")
                && summary.line().ends_with(" failed")
        );
        let first = &summary.found[0];
        let minimal = [
            Op::Run {
                exit_code: 0,
                millis: 0,
                image: Image::Default,
                output: Output::Plain,
            },
            Op::CrashLauncher { launcher: 0 },
            Op::Cancel { back: 0 },
        ];
        assert!(
            first.shrunk.ops.len() == 3 && minimal.iter().all(|o| first.shrunk.ops.contains(o)),
            "shrunk to {:?} from {:?}",
            first.shrunk.ops,
            first.original.ops
        );
        assert!(
            first.original.ops.len() > 3,
            "nothing to shrink: pick another seed"
        );
        assert_eq!(first.shrunk.capacities.len(), 1);
    }

    #[test]
    fn shrinking_keeps_the_failure_it_found_and_does_not_drift_to_another() {
        // Two planted bugs; the first failure reported names the one to keep.
        let mut two_bugs = |s: &Scenario, seed: u64| {
            let steps: Vec<&Step> = s.phases.iter().flat_map(|p| &p.steps).collect();
            let mut r = cancel_after_crash(s, seed)?;
            if steps
                .iter()
                .any(|s| matches!(s, Step::Schedule(s) if s.behaviour.exit_code != 0))
            {
                r.failures.push("run r2 exited 3 and was lost".into());
                r.passed = false;
            }
            Ok(r)
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = options(dir.path());
        opts.max_shrunk = usize::MAX;
        let summary = explore(&opts, &mut two_bugs, &mut std::io::sink()).expect("explores");
        let both: Vec<&Found> = summary
            .found
            .iter()
            .filter(|f| {
                f.original
                    .ops
                    .iter()
                    .any(|o| matches!(o, Op::Run { exit_code, .. } if *exit_code != 0))
                    && f.failures[0].contains("after a crash")
            })
            .collect();
        assert!(!both.is_empty(), "no schedule with both bugs, crash first");
        for f in both {
            assert_eq!(f.shrunk.ops.len(), 3, "{:?}", f.shrunk.ops);
            assert!(f.shrunk.ops.contains(&Op::CrashLauncher { launcher: 0 }));
        }
        assert_eq!(
            signature("run r12 never reached a terminal state (stuck in scheduled)"),
            "run never reached a terminal state (stuck in scheduled)"
        );
    }

    #[test]
    fn the_written_file_parses_and_replays_to_the_same_verdict() {
        let dir = tempfile::tempdir().expect("tempdir");
        let summary = explore(
            &options(dir.path()),
            &mut cancel_after_crash,
            &mut std::io::sink(),
        )
        .expect("explores");
        let first = &summary.found[0];
        let scenario = crate::parse::load(&first.file).expect("the written file parses");
        assert_eq!(scenario.phases, first.shrunk.scenario().phases);
        let replayed = cancel_after_crash(&scenario, scenario.seed).expect("runs");
        assert!(!replayed.passed);
        assert_eq!(replayed.failures, first.failures);
        assert!(first.replay.contains(&first.file.display().to_string()));
        assert!(first.replay.contains(&format!("--seed {}", scenario.seed)));
        let page = std::fs::read_to_string(first.file.with_extension("html"))
            .expect("the failure's timeline is written next to its file");
        assert!(
            page.starts_with("<!DOCTYPE html>"),
            "{}",
            &page[..80.min(page.len())]
        );
    }

    #[test]
    fn failures_matching_known_findings_are_counted_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = options(dir.path());
        opts.known = vec!["canceled after a crash".into()];
        let summary =
            explore(&opts, &mut cancel_after_crash, &mut std::io::sink()).expect("explores");
        assert!(summary.found.is_empty());
        assert!(!summary.known.is_empty());
        assert_eq!(summary.line(), "explored 300 schedules: 0 failed");
        opts.known = vec!["something else".into()];
        let summary =
            explore(&opts, &mut cancel_after_crash, &mut std::io::sink()).expect("explores");
        assert!(!summary.found.is_empty());
    }

    #[test]
    fn threads_find_and_shrink_what_one_thread_does() {
        let one = tempfile::tempdir().expect("tempdir");
        let two = tempfile::tempdir().expect("tempdir");
        let make = || -> Box<Runner<'static>> { Box::new(cancel_after_crash) };
        let a = explore_parallel(&options(one.path()), 1, &make, &mut std::io::sink())
            .expect("explores");
        let b = explore_parallel(&options(two.path()), 2, &make, &mut std::io::sink())
            .expect("explores");
        assert!(!a.found.is_empty());
        let seeds = |s: &Summary| -> Vec<(u64, usize)> {
            s.found
                .iter()
                .map(|f| (f.original.seed, f.shrunk.ops.len()))
                .collect()
        };
        assert_eq!(seeds(&a), seeds(&b));
        assert_eq!(a.line(), b.line());
    }

    #[test]
    fn the_same_seed_explores_the_same_schedules() {
        let record = |seed| {
            let mut seen = Vec::new();
            let mut runner = |s: &Scenario, seed: u64| {
                seen.push(serde_yaml::to_string(s).expect("yaml"));
                cancel_after_crash(s, seed).map(|mut r| {
                    r.passed = true;
                    r
                })
            };
            let opts = Options::new(25, seed, PathBuf::from("unused"));
            let summary = explore(&opts, &mut runner, &mut std::io::sink()).expect("explores");
            assert_eq!(summary.line(), "explored 25 schedules: 0 failed");
            seen
        };
        assert_eq!(record(7), record(7));
        assert_ne!(record(7), record(8));
    }
}
