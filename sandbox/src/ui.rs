//! Terminal output: progress bars on a terminal, plain timestamped lines otherwise.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_backend::{kinds, BackendHandle, Event};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::broadcast::error::RecvError;

/// Run ULID -> demo name, for readable progress lines.
pub type Names = Arc<Mutex<BTreeMap<String, String>>>;

#[derive(Clone)]
pub struct Ui {
    bars: Option<Bars>,
    start: Instant,
    planned: Arc<AtomicU64>,
}

#[derive(Clone)]
struct Bars {
    multi: MultiProgress,
    runs: ProgressBar,
    status: ProgressBar,
}

impl Ui {
    /// Progress bars when asked for and stderr is a terminal; plain lines otherwise.
    pub fn new(progress: bool) -> Ui {
        let bars = (progress && std::io::stderr().is_terminal()).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let runs = multi.add(ProgressBar::new(0));
            runs.set_style(
                ProgressStyle::with_template(
                    "{spinner:.green} [{elapsed:>3}] {bar:30.cyan/blue} {pos}/{len} runs done  {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            runs.enable_steady_tick(Duration::from_millis(120));
            let status = multi.add(ProgressBar::new_spinner());
            status.set_style(ProgressStyle::with_template("  {msg}").expect("valid template"));
            Bars {
                multi,
                runs,
                status,
            }
        });
        Ui {
            bars,
            start: Instant::now(),
            planned: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn is_interactive(&self) -> bool {
        self.bars.is_some()
    }

    /// One line of narration, above the bars.
    pub fn line(&self, msg: impl AsRef<str>) {
        let text = format!(
            "[{:>6.2}s] {}",
            self.start.elapsed().as_secs_f64(),
            msg.as_ref()
        );
        match &self.bars {
            Some(b) => {
                let _ = b.multi.println(text);
            }
            None => println!("{text}"),
        }
    }

    /// Plain text with no timestamp (the summary, instructions), above the bars.
    pub fn text(&self, msg: impl AsRef<str>) {
        match &self.bars {
            Some(b) => {
                let _ = b.multi.println(msg.as_ref());
            }
            None => println!("{}", msg.as_ref()),
        }
    }

    /// How many runs the demo will schedule (the bar's length until there are more).
    pub fn set_planned(&self, n: u64) {
        self.planned.store(n, Ordering::Relaxed);
        if let Some(b) = &self.bars {
            b.runs.set_length(n.max(b.runs.length().unwrap_or(0)));
        }
    }

    pub fn set_runs(&self, done: u64, total: u64) {
        if let Some(b) = &self.bars {
            b.runs.set_length(total);
            b.runs.set_position(done);
        }
    }

    pub fn set_message(&self, msg: impl Into<String>) {
        if let Some(b) = &self.bars {
            b.runs.set_message(msg.into());
        }
    }

    pub fn set_status(&self, msg: impl Into<String>) {
        if let Some(b) = &self.bars {
            b.status.set_message(msg.into());
        }
    }

    /// Removes the bars (before the summary table).
    pub fn clear(&self) {
        if let Some(b) = &self.bars {
            b.runs.finish_and_clear();
            b.status.finish_and_clear();
            let _ = b.multi.clear();
        }
    }
}

pub fn short(ulid: &str) -> &str {
    ulid.get(ulid.len().saturating_sub(6)..).unwrap_or(ulid)
}

/// The demo's name for a run (its stack is `demo-<name>`), else the ULID's tail.
fn run_name(backend: &BackendHandle, names: &Names, ulid: &str) -> String {
    if let Some(n) = names.lock().unwrap_or_else(|p| p.into_inner()).get(ulid) {
        return n.clone();
    }
    backend
        .run(ulid)
        .and_then(|v| {
            v.spec
                .stack_id
                .strip_prefix(STACK_PREFIX)
                .map(str::to_string)
        })
        .unwrap_or_else(|| format!("…{}", short(ulid)))
}

/// Demo runs belong to stack `demo-<name>`.
pub const STACK_PREFIX: &str = "demo-";

/// Follows the backend's event stream: narrates what happens and keeps the status line
/// (runs by state, workers by state) and the done/total bar current. Ends when the
/// backend's event channel closes or the task is aborted.
/// `shown` gets the sequence number of each event once it is narrated.
pub async fn watch(
    backend: BackendHandle,
    ui: Ui,
    names: Names,
    mut events: tokio::sync::broadcast::Receiver<Event>,
    shown: tokio::sync::watch::Sender<u64>,
) {
    loop {
        let ev = match events.recv().await {
            Ok(ev) => ev,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => break,
        };
        if let Some(text) = narrate(&backend, &ev, &names) {
            ui.line(text);
        }
        refresh(&backend, &ui);
        shown.send_replace(ev.seq);
    }
}

/// Recomputes the status line and the bar from the backend's current state.
pub fn refresh(backend: &BackendHandle, ui: &Ui) {
    if !ui.is_interactive() {
        return;
    }
    let runs = backend.runs();
    let mut by_state: BTreeMap<protocol::RunState, usize> = BTreeMap::new();
    for r in &runs {
        *by_state.entry(r.state).or_default() += 1;
    }
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for w in backend.workers() {
        *by_status.entry(w.status.clone()).or_default() += 1;
    }
    let runs_text = if by_state.is_empty() {
        "none".to_string()
    } else {
        by_state
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let workers_text = if by_status.is_empty() {
        "none yet".to_string()
    } else {
        by_status
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    ui.set_status(format!("runs: {runs_text}   workers: {workers_text}"));
    let total = (runs.len() as u64).max(ui.planned.load(Ordering::Relaxed));
    let done = runs.iter().filter(|r| r.state.is_terminal()).count() as u64;
    ui.set_runs(done, total);
}

fn narrate(backend: &BackendHandle, ev: &Event, names: &Names) -> Option<String> {
    let worker = || ev.worker.as_deref().map(short).unwrap_or("?").to_string();
    match ev.kind.as_str() {
        kinds::RUN_CREATED => Some(format!(
            "run {}: created",
            run_name(backend, names, ev.run.as_deref()?)
        )),
        kinds::RUN_QUEUED => Some(format!(
            "run {}: queued (waiting for free capacity)",
            run_name(backend, names, ev.run.as_deref()?)
        )),
        kinds::RUN_OFFERED => Some(format!(
            "run {}: offered to worker …{} (run.scheduled)",
            run_name(backend, names, ev.run.as_deref()?),
            worker()
        )),
        kinds::RUN_OFFER_EXPIRED => Some(format!(
            "run {}: the offer went unclaimed for a lease TTL; offering it again",
            run_name(backend, names, ev.run.as_deref()?)
        )),
        kinds::RUN_TRANSITION => {
            let name = run_name(backend, names, ev.run.as_deref()?);
            let mut text = format!(
                "run {name}: {} -> {}",
                ev.str("from").unwrap_or("?"),
                ev.str("to").unwrap_or("?")
            );
            if let Some(v) = ev.str("worker_version") {
                text.push_str(&format!("  (worker {v})"));
            }
            if let Some(code) = ev.data.get("exit_code").and_then(|c| c.as_i64()) {
                text.push_str(&format!("  exit code {code}"));
            }
            if let Some(reason) = ev.data.get("reason").filter(|r| !r.is_null()) {
                let code = reason
                    .get("code")
                    .and_then(|c| c.as_str())
                    .map(str::to_string)
                    .unwrap_or_else(|| reason.to_string());
                text.push_str(&format!("  reason {code}"));
            }
            Some(text)
        }
        kinds::WORKER_REGISTERED => Some(format!("worker …{}: registered", worker())),
        kinds::WORKER_ONLINE => Some(format!("worker …{}: online", worker())),
        kinds::WORKER_GONE => Some(format!("worker …{}: gone", worker())),
        kinds::WORKER_OFFLINE => Some(format!("worker …{}: offline", worker())),
        kinds::BINARY_PUBLISHED => {
            let b = ev.data.get("binary")?;
            Some(format!(
                "worker binary {} published for {} ({})",
                b.get("version")?.as_str()?,
                b.get("arch")?.as_str()?,
                ev.str("kind").unwrap_or("?")
            ))
        }
        kinds::BINARY_DOWNLOAD => Some(format!(
            "launcher downloaded worker binary {} for {} (HTTP {})",
            ev.str("version").unwrap_or("?"),
            ev.str("arch").unwrap_or("?"),
            ev.data
                .get("status")
                .map(|s| s.to_string())
                .unwrap_or_default()
        )),
        _ => None,
    }
}
