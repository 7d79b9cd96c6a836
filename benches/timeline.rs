//! A timeline of warm runs, step by step from the run's scheduling (the offer's
//! publication follows at once) to its container's start and its `running` report: every
//! tracing event of the fake backend (its event log, each API request's arrival and
//! answer), of fake-docker (each request's arrival and reply) and of the launcher
//! (in-process), stamped on one monotonic clock as it is emitted.
//!
//! `scripts/warm-run-timeline.sh` (`cargo bench --bench timeline`, release). Prints the
//! slowest and the fastest of `RUNS` warm runs in full, then each run's time to the
//! container's start.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fake_backend::{kinds, ScheduleRun};
use launcher::config::MapEnv;
use protocol::Arch;
use scenarios::launcher_node::LauncherNode;
use tracing::field::{Field, Visit};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// Warm runs recorded (one warm-up run before them is not).
const RUNS: usize = 10;
const QUICK: &str = r#"{"duration_ms":0,"exit_code":0}"#;

static RECORDING: AtomicBool = AtomicBool::new(false);
static RECORDS: Mutex<Vec<Record>> = Mutex::new(Vec::new());

struct Record {
    at: Instant,
    target: String,
    text: String,
}

/// Keeps every event while [`RECORDING`] is set: its time, target, message and fields.
struct Recorder;

#[derive(Default)]
struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?} "));
        } else {
            self.0.push_str(&format!("{}={value:?} ", field.name()));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value} "));
        } else {
            self.0.push_str(&format!("{}={value} ", field.name()));
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Recorder {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if !RECORDING.load(Ordering::Relaxed) {
            return;
        }
        let at = Instant::now();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let record = Record {
            at,
            target: event.metadata().target().to_string(),
            text: fields.0.trim_end().to_string(),
        };
        RECORDS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let targets = Targets::new()
        .with_target("fake_backend", tracing::Level::DEBUG)
        .with_target("fake_docker", tracing::Level::DEBUG)
        .with_target("launcher", tracing::Level::DEBUG);
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(Recorder.with_filter(targets)),
    )
    .expect("the only subscriber");
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(timeline());
}

async fn timeline() {
    let common::Fakes {
        dir,
        backend,
        docker,
    } = common::start_fakes("bench-timeline").await;
    backend
        .publish_version(
            Arch::Amd64,
            Some("timeline"),
            common::padded_binary("timeline", 1 << 20),
        )
        .expect("publish");
    let creds = backend.create_pool().expect("pool");
    let mut env = MapEnv::default();
    for (k, v) in common::launcher_env(&creds, docker.docker_host(), &dir.path().join("l"), 1) {
        env.set(k, v);
    }
    let config = launcher::config::load(&env).expect("launcher config");
    let since = backend.last_seq();
    let mut node = LauncherNode::start_multi_thread("timeline", config).expect("launcher thread");
    backend
        .wait_for_since(since, |e| e.kind == kinds::WORKER_ONLINE)
        .await;

    let mut totals = Vec::new();
    let mut timelines = Vec::new();
    for i in 0..=RUNS {
        let warm_up = i == 0;
        RECORDS.lock().unwrap_or_else(|p| p.into_inner()).clear();
        RECORDING.store(!warm_up, Ordering::SeqCst);
        let from = docker.events().last().map_or(0, |e| e.seq + 1);
        let since = backend.last_seq();
        let t0 = Instant::now();
        let req = ScheduleRun::new(creds.pool_ulid.clone()).env(fake_docker::BEHAVIOUR_ENV, QUICK);
        let run = backend.schedule_run(req).expect("schedule");
        docker
            .wait_for_event(|e| e.seq >= from && common::is_start(e))
            .await;
        let started = t0.elapsed();
        // Until the run has ended, so its `running` report is on the timeline too.
        backend
            .wait_for_since(since, |e| {
                common::run_ended(e) && e.run.as_deref() == Some(run.as_str())
            })
            .await;
        RECORDING.store(false, Ordering::SeqCst);
        if !warm_up {
            totals.push(started);
            let records: Vec<(Duration, String, String)> =
                std::mem::take(&mut *RECORDS.lock().unwrap_or_else(|p| p.into_inner()))
                    .into_iter()
                    .map(|r| (r.at.saturating_duration_since(t0), r.target, r.text))
                    .collect();
            timelines.push(records);
        }
    }
    let slowest = (0..RUNS).max_by_key(|&i| totals[i]).expect("runs");
    let fastest = (0..RUNS).min_by_key(|&i| totals[i]).expect("runs");
    for (name, i) in [("slowest", slowest), ("fastest", fastest)] {
        print_timeline(name, i, totals[i], &timelines[i]);
    }
    let list: Vec<String> = totals.iter().map(|d| format!("{:.2}", ms(*d))).collect();
    println!(
        "Scheduled to container start, each of the {RUNS} warm runs (ms): {}",
        list.join(", ")
    );

    node.signal().await;
    node.wait().await;
    backend.shutdown().await;
    docker.shutdown().await;
}

fn print_timeline(name: &str, i: usize, started: Duration, records: &[(Duration, String, String)]) {
    println!(
        "The {name} of {RUNS} warm runs (run {}, container started after {:.2} ms); t = ms since \
         the run was scheduled, dt = since the line before.",
        i + 1,
        ms(started)
    );

    println!();
    println!("| t (ms) | dt (ms) | where | what |");
    println!("|---:|---:|---|---|");
    let mut prev = Duration::ZERO;
    for (at, target, text) in records {
        let text = text.replace('|', "\\|");
        println!(
            "| {:.3} | {:.3} | {} | {} |",
            ms(*at),
            ms(at.saturating_sub(prev)),
            target,
            text
        );
        prev = *at;
    }
    println!();
}
