//! Resident memory of the real `spacelift-launcher` binary (DESIGN.md, docs/performance.md
//! "Memory"), as a subprocess so the numbers are the launcher's alone, not the in-process
//! fakes' (fake backend and fake-docker run in this bench's process).
//!
//! - `idle`: VmRSS once the launcher is online and one warm-up run has finished (runner
//!   image present, worker binary cached).
//! - `runs64`: peak RSS (VmHWM, reset first through `/proc/<pid>/clear_refs`) over a batch
//!   of 64 runs in flight at once (capacity 64): every container is running before any
//!   ends (asserted on fake-docker's event log), until the backend has seen all 64 end.
//! - `download200`: peak RSS while the launcher downloads a new 200 MiB worker binary: a
//!   new version is published each iteration (the launcher prefetches it on the
//!   announcement), one run is scheduled and finishes, which needs the binary. A launcher
//!   that streams to disk stays near its RSS before the download; one that buffers the
//!   body grows by ~200 MiB. The summary also prints peak minus the RSS at the start of
//!   each iteration: after `runs64` the allocator keeps several MiB more than at `idle`.
//!
//! Values are bytes, through a criterion custom measurement; `iter_custom` returns the sum
//! over its iterations (criterion divides by `iters`). Flat sampling, 10 samples, so the
//! slow phases run 11 times (one warm-up iteration).
//!
//! `cargo bench --bench memory` (release; the binary is built in the same profile).
//! Linux only (/proc).

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use fake_backend::{kinds, BackendHandle, ScheduleRun};
use fake_docker::FakeDockerHandle;
use protocol::Arch;
use tokio::process::{Child, Command};
use tokio::runtime::Runtime;

const BIN: &str = "spacelift-launcher";
/// Launcher capacity and the size of the `runs64` batch.
const RUNS: usize = 64;
/// How long each `runs64` container runs. Long enough that all 64 have started before
/// the first one ends (asserted each iteration; the time to start them is printed).
const RUN_DURATION_MS: u64 = 10_000;
/// The `download200` worker binary.
const BIG_BINARY_BYTES: usize = 200 * 1024 * 1024;
/// The binary published at start (and used by every run until `download200`).
const SMALL_BINARY_BYTES: usize = 1 << 20;
/// A safety net for each wait on an event: a stuck launcher fails the bench with its log
/// instead of hanging it. Not a sleep: the waits end on events.
const DEADLINE: Duration = Duration::from_secs(600);

// ---- the measurement: bytes ------------------------------------------------------------

/// A measurement whose values are bytes, supplied by `iter_custom` (`start`/`end` are not
/// used: there is nothing to read around a closure).
struct Bytes;

impl Measurement for Bytes {
    type Intermediate = ();
    type Value = u64;

    fn start(&self) -> Self::Intermediate {}
    fn end(&self, _: Self::Intermediate) -> Self::Value {
        0
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &BytesFormatter
    }
}

struct BytesFormatter;

impl ValueFormatter for BytesFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (div, unit) = if typical < 1024.0 {
            (1.0, "B")
        } else if typical < 1024.0 * 1024.0 {
            (1024.0, "KiB")
        } else if typical < 1024.0 * 1024.0 * 1024.0 {
            (1024.0 * 1024.0, "MiB")
        } else {
            (1024.0 * 1024.0 * 1024.0, "GiB")
        };
        for v in values {
            *v /= div;
        }
        unit
    }

    fn scale_throughputs(&self, _: f64, _: &Throughput, _: &mut [f64]) -> &'static str {
        // No throughput is set on this group; bytes per iteration have no rate.
        "B"
    }

    fn scale_for_machines(&self, _: &mut [f64]) -> &'static str {
        "B"
    }
}

// ---- /proc -------------------------------------------------------------------------------

/// A `kB` field of /proc/<pid>/status (VmRSS, VmHWM), in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let line = text
        .lines()
        .find(|l| l.split(':').next() == Some(field))
        .unwrap_or_else(|| panic!("no {field} in {path}"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unparsable {path} line {line:?}"));
    kib * 1024
}

fn rss(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS")
}

fn peak(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM")
}

/// Resets VmHWM to the current RSS (Linux `clear_refs` value 5).
fn reset_peak(pid: u32) {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, "5").unwrap_or_else(|e| panic!("writing 5 to {path}: {e}"));
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

// ---- the launcher binary -----------------------------------------------------------------

/// `target/` of this bench executable (`target/<profile>/deps/memory-…`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("locating the bench executable");
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("the bench executable is not under target/<profile>/deps")
        .to_path_buf()
}

/// Builds the launcher so the measured binary is never stale; its path. Under `cargo
/// bench` (release) in the dist profile, what operators run (release with whole-program
/// LTO); otherwise in this bench's own profile.
fn build_launcher() -> PathBuf {
    let target = target_dir();
    let exe = std::env::current_exe().expect("locating the bench executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = std::process::Command::new(&cargo);
    cmd.args(["build", "-p", "spacelift-launcher", "--bin", BIN]);
    let profile_dir = if profile_dir == "release" {
        cmd.args(["--profile", "dist"]);
        "dist".to_string()
    } else {
        profile_dir
    };
    eprintln!("memory bench: cargo build -p spacelift-launcher --bin {BIN} ({profile_dir})");
    let status = cmd
        .arg("--target-dir")
        .arg(&target)
        .current_dir(root)
        .stdin(Stdio::null())
        .status()
        .expect("running cargo build");
    assert!(
        status.success(),
        "cargo build -p spacelift-launcher failed ({status})"
    );
    let bin = target.join(&profile_dir).join(BIN);
    assert!(bin.is_file(), "{} was not built", bin.display());
    bin
}

struct Launcher {
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl Launcher {
    fn spawn(bin: &Path, env: &[(&str, String)], log: &Path) -> Launcher {
        let file = std::fs::File::create(log).expect("launcher log file");
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("SPACELIFT_") || k == "DOCKER_HOST" {
                cmd.env_remove(k.as_ref());
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file handle"))
            .stderr(file)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let pid = child.id().expect("the launcher exited at once");
        Launcher {
            child,
            pid,
            log: log.to_path_buf(),
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM (the launcher drains and exits), then waits; SIGKILL if it does not exit.
    async fn stop(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            eprintln!("memory bench: the launcher had already exited: {status}");
            return;
        }
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if !sent.is_ok_and(|s| s.success()) {
            eprintln!("memory bench: kill -TERM {} failed", self.pid);
        }
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(status) => eprintln!(
                "memory bench: the launcher exited with {status:?}; log {}:\n{}",
                self.log.display(),
                self.log_tail(20)
            ),
            Err(_) => {
                eprintln!("memory bench: the launcher ignored SIGTERM for 60 s; killing it");
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
            }
        }
    }
}

// ---- the world ---------------------------------------------------------------------------

/// What the bench saw besides criterion's values, for the summary.
#[derive(Default)]
struct Notes {
    /// VmRSS when all 64 containers had started and none had ended, per iteration.
    rss_at_64: Vec<u64>,
    /// Time from scheduling 64 runs to the 64th container start, per iteration.
    start_64: Vec<Duration>,
    /// Wall time of one `download200` iteration (publish + run).
    download_iter: Vec<Duration>,
    /// `download200`: VmHWM minus the VmRSS at the start of the iteration (after
    /// `runs64` the launcher's allocator keeps more than at `idle`).
    download_growth: Vec<u64>,
    /// Wall time of one `runs64` iteration.
    runs_iter: Vec<Duration>,
}

struct World {
    backend: BackendHandle,
    docker: FakeDockerHandle,
    pool: String,
    launcher: Launcher,
    versions: u64,
    notes: Notes,
    dir: tempfile::TempDir,
}

fn is_end(e: &fake_docker::Event) -> bool {
    e.kind == "container" && e.action == "die"
}

async fn world(bin: &Path) -> World {
    let common::Fakes {
        dir,
        backend,
        docker,
    } = common::start_fakes("bench-memory").await;
    let creds = backend.create_pool().expect("pool");
    backend
        .publish_version(
            Arch::Amd64,
            Some("m0"),
            common::padded_binary("m0", SMALL_BINARY_BYTES),
        )
        .expect("publish");
    let mut env = common::launcher_env(
        &creds,
        docker.docker_host(),
        &dir.path().join("launcher"),
        RUNS as u32,
    );
    // Stop sooner at the end; a plain-text log file.
    env.push(("SPACELIFT_LAUNCHER_STOP_GRACE", "5s".to_string()));
    env.push(("NO_COLOR", "1".to_string()));
    env.push(("SPACELIFT_LAUNCHER_LOG_FORMAT", "text".to_string()));
    let log = dir.path().join("launcher.log");
    let since = backend.last_seq();
    let launcher = Launcher::spawn(bin, &env, &log);
    eprintln!(
        "memory bench: launcher pid {} (capacity {RUNS}), log {}",
        launcher.pid,
        log.display()
    );
    let mut w = World {
        backend,
        docker,
        pool: creds.pool_ulid,
        launcher,
        versions: 0,
        notes: Notes::default(),
        dir,
    };
    let backend = w.backend.clone();
    w.guard(
        "the launcher to come online",
        backend.wait_for_since(since, |e| e.kind == kinds::WORKER_ONLINE),
    )
    .await;
    // Warm-up: pulls the image and caches the binary.
    w.run_batch(1, 0).await;
    w
}

impl World {
    /// `fut`, or a panic with the launcher's log if it takes longer than [`DEADLINE`].
    async fn guard<T>(&mut self, what: &str, fut: impl std::future::Future<Output = T>) -> T {
        match tokio::time::timeout(DEADLINE, fut).await {
            Ok(v) => v,
            Err(_) => {
                let exited = self.launcher.child.try_wait().ok().flatten();
                panic!(
                    "memory bench: gave up waiting for {what} after {DEADLINE:?} (launcher \
                     exited: {exited:?}); launcher log {} ends with:\n{}",
                    self.launcher.log.display(),
                    self.launcher.log_tail(40)
                );
            }
        }
    }

    fn next_docker_seq(&self) -> u64 {
        self.docker.events().last().map_or(0, |e| e.seq + 1)
    }

    /// Schedules `n` runs whose containers run `duration_ms`; waits until all `n` have
    /// started (returns the time that took and the next fake-docker seq to look at), then
    /// calls `at_start`, then waits until the backend has seen all of them end.
    async fn run_batch_with(
        &mut self,
        n: usize,
        duration_ms: u64,
        at_start: impl FnOnce(&mut World, u64, Duration),
    ) {
        let from = self.next_docker_seq();
        let since = self.backend.last_seq();
        let behaviour = format!(r#"{{"duration_ms":{duration_ms},"exit_code":0}}"#);
        let t0 = Instant::now();
        let mut runs = HashSet::with_capacity(n);
        for _ in 0..n {
            let req =
                ScheduleRun::new(self.pool.clone()).env(fake_docker::BEHAVIOUR_ENV, &behaviour);
            runs.insert(self.backend.schedule_run(req).expect("schedule"));
        }
        let docker = self.docker.admin().clone();
        let mut next = from;
        for i in 0..n {
            let ev = self
                .guard(
                    &format!("container start {} of {n}", i + 1),
                    docker.wait_for_event(|e| e.seq >= next && common::is_start(e)),
                )
                .await;
            next = ev.seq + 1;
        }
        let started = t0.elapsed();
        at_start(self, from, started);
        let backend = self.backend.clone();
        let mut done = HashSet::with_capacity(n);
        self.guard(
            &format!("the backend to see {n} runs end"),
            backend.wait_for_since(since, |e| {
                if common::run_ended(e) {
                    if let Some(run) = e.run.as_deref().filter(|r| runs.contains(*r)) {
                        done.insert(run.to_string());
                    }
                }
                done.len() == n
            }),
        )
        .await;
    }

    async fn run_batch(&mut self, n: usize, duration_ms: u64) {
        self.run_batch_with(n, duration_ms, |_, _, _| {}).await;
    }

    /// One `runs64` iteration: the launcher's peak RSS over 64 concurrent runs.
    async fn runs64(&mut self) -> u64 {
        let t0 = Instant::now();
        let pid = self.launcher.pid;
        reset_peak(pid);
        self.run_batch_with(RUNS, RUN_DURATION_MS, |w, from, started| {
            let rss_now = rss(pid);
            let early: Vec<_> = w
                .docker
                .events_since(from)
                .into_iter()
                .filter(is_end)
                .collect();
            assert!(
                early.is_empty(),
                "{} container(s) ended before all {RUNS} had started ({started:?} to start \
                 them; raise RUN_DURATION_MS above {RUN_DURATION_MS}): {:?}",
                early.len(),
                early.first()
            );
            w.notes.rss_at_64.push(rss_now);
            w.notes.start_64.push(started);
        })
        .await;
        let value = peak(pid);
        self.notes.runs_iter.push(t0.elapsed());
        value
    }

    /// One `download200` iteration: publish a new 200 MiB version, run once, peak RSS.
    async fn download200(&mut self) -> u64 {
        let t0 = Instant::now();
        let pid = self.launcher.pid;
        self.versions += 1;
        let version = format!("big{}", self.versions);
        let since = self.backend.last_seq();
        reset_peak(pid);
        let before = rss(pid);
        // Rendering, hashing and storing 200 MiB blocks: keep it off the runtime threads
        // that serve the launcher.
        let backend = self.backend.clone();
        let v = version.clone();
        tokio::task::spawn_blocking(move || {
            backend
                .publish_version(
                    Arch::Amd64,
                    Some(&v),
                    common::padded_binary(&v, BIG_BINARY_BYTES),
                )
                .expect("publish")
        })
        .await
        .expect("publish task");
        self.run_batch(1, 0).await;
        let value = peak(pid);
        // The run needed the new version, so the launcher downloaded it in full.
        let served: u64 = self
            .backend
            .events_since(since)
            .iter()
            .filter(|e| e.kind == kinds::BINARY_DOWNLOAD && e.str("version") == Some(&version))
            .filter_map(|e| e.data.get("bytes").and_then(serde_json::Value::as_u64))
            .sum();
        assert!(
            served >= BIG_BINARY_BYTES as u64,
            "the backend served {served} bytes of {version}, not the whole {BIG_BINARY_BYTES}"
        );
        self.notes.download_iter.push(t0.elapsed());
        self.notes
            .download_growth
            .push(value.saturating_sub(before));
        value
    }
}

// ---- the benchmark -----------------------------------------------------------------------

fn median(v: &[u64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_unstable();
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2] as f64),
        n => Some((v[n / 2 - 1] + v[n / 2]) as f64 / 2.0),
    }
}

/// Criterion's median for `memory/<id>` (what the report script reads).
fn criterion_median(id: &str) -> Option<f64> {
    let home = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("criterion"));
    let path = home
        .join("memory")
        .join(id)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.pointer("/median/point_estimate")?.as_f64()
}

fn memory(c: &mut Criterion<Bytes>) {
    let bin = build_launcher();
    let rt = Runtime::new().expect("tokio runtime");
    let t_all = Instant::now();
    let world = tokio::sync::Mutex::new(rt.block_on(world(&bin)));
    let pid = rt.block_on(world.lock()).launcher.pid;
    // Each phase's own values, in case criterion's files are elsewhere.
    let values: Mutex<[Vec<u64>; 3]> = Mutex::default();
    let record = |i: usize, v: u64| values.lock().unwrap_or_else(|e| e.into_inner())[i].push(v);

    let mut g = c.benchmark_group("memory");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(1));
    g.bench_function("idle", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let v = rss(pid);
                    record(0, v);
                    v
                })
                .sum::<u64>()
        })
    });
    // One iteration per sample: these take seconds each, 11 iterations (one warm-up).
    g.warm_up_time(Duration::from_millis(1));
    for (i, id) in [(1, "runs64"), (2, "download200")] {
        g.bench_function(id, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let world = &world;
                let record = &record;
                async move {
                    let mut total = 0;
                    for _ in 0..iters {
                        let mut w = world.lock().await;
                        let v = if i == 1 {
                            w.runs64().await
                        } else {
                            w.download200().await
                        };
                        record(i, v);
                        total += v;
                    }
                    total
                }
            })
        });
    }
    g.finish();

    let mut w = world.into_inner();
    // MEMORY_SOAK_RUNS=N: then N more quick runs, 64 at a time, with the RSS after each
    // batch, to tell a leak (grows without bound) from caches that fill up and stay.
    let soak_runs: usize = std::env::var("MEMORY_SOAK_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut soak = Vec::new();
    if soak_runs > 0 {
        println!("\nmemory soak: {soak_runs} runs, {RUNS} at a time (runs done, VmRSS MiB):");
        let mut done = 0;
        while done < soak_runs {
            rt.block_on(w.run_batch(RUNS, 0));
            done += RUNS;
            let now = rss(pid);
            soak.push((done, now));
            if soak.len() % 10 == 1 || done >= soak_runs {
                println!("  {done:>6} {:>8.1}", mib(now as f64));
            }
        }
    }
    rt.block_on(w.launcher.stop());
    let elapsed = t_all.elapsed();

    let values = values.into_inner().unwrap_or_else(|e| e.into_inner());
    let ids = ["idle", "runs64", "download200"];
    let mut medians = [None; 3];
    println!("\nmemory: launcher RSS, medians (MiB):");
    for (i, id) in ids.iter().enumerate() {
        // Criterion's file only if this run measured the phase (a filter may skip it).
        let (m, src) = match criterion_median(id).filter(|_| !values[i].is_empty()) {
            Some(m) => (Some(m), "criterion"),
            None => (median(&values[i]), "all iterations"),
        };
        medians[i] = m;
        match m {
            Some(m) => println!(
                "  {id:<12} {:>8.1} MiB  ({src}; {} iterations)",
                mib(m),
                values[i].len()
            ),
            None => println!("  {id:<12} not measured"),
        }
    }
    if let Some(at64) = median(&w.notes.rss_at_64) {
        let starts: Vec<u64> = w
            .notes
            .start_64
            .iter()
            .map(|d| d.as_millis() as u64)
            .collect();
        let iters: Vec<u64> = w
            .notes
            .runs_iter
            .iter()
            .map(|d| d.as_millis() as u64)
            .collect();
        println!(
            "  runs64: VmRSS with all {RUNS} running {:.1} MiB (median); {RUNS} starts took {:.1} s \
             (median, max {:.1} s) of each container's {:.0} s; an iteration took {:.1} s (median)",
            mib(at64),
            median(&starts).unwrap_or_default() / 1000.0,
            starts.iter().max().copied().unwrap_or_default() as f64 / 1000.0,
            RUN_DURATION_MS as f64 / 1000.0,
            median(&iters).unwrap_or_default() / 1000.0,
        );
    }
    if let (Some(idle), Some(dl)) = (medians[0], medians[2]) {
        let iters: Vec<u64> = w
            .notes
            .download_iter
            .iter()
            .map(|d| d.as_millis() as u64)
            .collect();
        let growth = median(&w.notes.download_growth).unwrap_or_default();
        println!(
            "  download200: peak - idle = {:.1} MiB, peak - RSS at the iteration's start = \
             {:.1} MiB (median), while downloading a {:.0} MiB binary ({:.1}%); an iteration \
             took {:.1} s (median)",
            mib(dl - idle),
            mib(growth),
            mib(BIG_BINARY_BYTES as f64),
            100.0 * growth / BIG_BINARY_BYTES as f64,
            median(&iters).unwrap_or_default() / 1000.0,
        );
    }
    // For scripts/bench-report.sh: the per-iteration figures criterion cannot hold.
    let notes = serde_json::json!({
        "rss_at_64": w.notes.rss_at_64,
        "start_64_ms": w.notes.start_64.iter().map(|d| d.as_millis() as u64).collect::<Vec<_>>(),
        "download_growth": w.notes.download_growth,
        "soak": soak,
        "binary_bytes": std::fs::metadata(&bin).map(|m| m.len()).unwrap_or_default(),
    });
    let out = target_dir().join("memory-notes.json");
    if let Err(e) = std::fs::write(&out, notes.to_string()) {
        eprintln!("writing {}: {e}", out.display());
    }
    println!(
        "  (launcher {}; fakes in-process; whole bench {:.0} s after the build)",
        bin.display(),
        elapsed.as_secs_f64()
    );
    rt.block_on(async move {
        let World {
            backend,
            docker,
            dir,
            ..
        } = w;
        backend.shutdown().await;
        docker.shutdown().await;
        drop(dir);
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(Bytes);
    targets = memory
}
criterion_main!(benches);
