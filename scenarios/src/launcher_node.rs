//! One in-process launcher. It runs on its own OS thread with its own tokio runtime so a
//! crash can be simulated faithfully: shutting that runtime down drops every task and
//! socket at once (no MQTT DISCONNECT, so the Last Will fires; containers stay behind).

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use launcher::config::LauncherConfig;
use launcher::lifecycle::Signal;
use tokio::sync::{mpsc, oneshot};

/// Everything a launcher logged, formatted as an operator would read it on stderr. One per
/// launcher name, kept across restarts, for the secret oracle.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Whether both are one capture (in sim mode every launcher shares one).
    pub fn same_as(&self, other: &Captured) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// A subscriber for sim mode: as [`Captured::dispatch`], without timestamps (the
    /// wall clock means nothing there), and only the launcher's and the sim adapters'
    /// own lines (the fakes run on the same thread).
    pub fn sim_dispatch(&self) -> tracing::Dispatch {
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "warn,launcher=debug,scenarios::sim=info",
            ))
            .with_ansi(false)
            .without_time()
            .with_writer(move || sink.clone())
            .finish();
        tracing::Dispatch::new(subscriber)
    }

    /// A subscriber writing here: the launcher's own crate down to debug (what
    /// `SPACELIFT_DEBUG` can show), everything else at info (the binary's default).
    fn dispatch(&self) -> tracing::Dispatch {
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,launcher=debug"))
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::Dispatch::new(subscriber)
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

thread_local! {
    /// The capture of a runtime's blocking-pool thread, set for the thread's life.
    static THREAD_CAPTURE: RefCell<Option<tracing::dispatcher::DefaultGuard>> =
        const { RefCell::new(None) };
}

/// How an in-process launcher ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeExit {
    /// `app::run` returned: its process exit code, and the error message when it failed.
    Exited { code: i32, error: Option<String> },
    /// Crashed on purpose by the scenario.
    Crashed,
}

impl NodeExit {
    /// `exit 1: <error>`, `exit 0` or `crashed`, for traces and check failures.
    pub fn describe(&self) -> String {
        match self {
            NodeExit::Crashed => "crashed".into(),
            NodeExit::Exited { code, error: None } => format!("exit {code}"),
            NodeExit::Exited {
                code,
                error: Some(e),
            } => format!("exit {code}: {e}"),
        }
    }
}

pub struct LauncherNode {
    signals: mpsc::Sender<Signal>,
    crash: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<NodeExit>>,
    thread: Option<JoinHandle<()>>,
    exit: Option<NodeExit>,
}

impl LauncherNode {
    /// Starts the launcher on its own thread, its log output not captured.
    pub fn start(name: &str, config: LauncherConfig) -> std::io::Result<LauncherNode> {
        LauncherNode::spawn(name, config, None, false)
    }

    /// As [`LauncherNode::start`], on the runtime the binary runs on (`main.rs`: tokio's
    /// multi-thread runtime, a worker per core), so benchmarks measure what operators run.
    pub fn start_multi_thread(name: &str, config: LauncherConfig) -> std::io::Result<LauncherNode> {
        LauncherNode::spawn(name, config, None, true)
    }

    /// Starts the launcher on its own thread; what it logs goes to `output` (tracing's
    /// default subscriber is per thread, so the node's runtime threads are scoped to it).
    pub fn start_captured(
        name: &str,
        config: LauncherConfig,
        output: Captured,
    ) -> std::io::Result<LauncherNode> {
        LauncherNode::spawn(name, config, Some(output), false)
    }

    fn spawn(
        name: &str,
        config: LauncherConfig,
        output: Option<Captured>,
        multi_thread: bool,
    ) -> std::io::Result<LauncherNode> {
        let (sig_tx, sig_rx) = mpsc::channel(8);
        let (crash_tx, crash_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("launcher-{name}"))
            .spawn(move || {
                // Without a capture the process's default subscriber stays in place.
                let dispatch = output.map(|o| o.dispatch());
                let on_start = dispatch.clone();
                let mut builder = if multi_thread {
                    tokio::runtime::Builder::new_multi_thread()
                } else {
                    tokio::runtime::Builder::new_current_thread()
                };
                let rt = match builder
                    .enable_all()
                    .on_thread_start(move || {
                        if let Some(d) = &on_start {
                            let guard = tracing::dispatcher::set_default(d);
                            THREAD_CAPTURE.with(|c| *c.borrow_mut() = Some(guard));
                        }
                    })
                    .on_thread_stop(|| THREAD_CAPTURE.with(|c| drop(c.borrow_mut().take())))
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = done_tx.send(NodeExit::Exited {
                            code: 2,
                            error: Some(format!("building the launcher's runtime: {e}")),
                        });
                        return;
                    }
                };
                let _capture = dispatch.as_ref().map(tracing::dispatcher::set_default);
                let exit = rt.block_on(async move {
                    tokio::select! {
                        res = launcher::app::run(config, sig_rx) => match res {
                            Ok(outcome) => NodeExit::Exited { code: outcome.exit_code(), error: None },
                            Err(e) => NodeExit::Exited { code: 1, error: Some(e.to_string()) },
                        },
                        // A dropped sender (the node dropped) is a crash too.
                        _ = crash_rx => NodeExit::Crashed,
                    }
                });
                rt.shutdown_background();
                let _ = done_tx.send(exit);
            })?;
        Ok(LauncherNode {
            signals: sig_tx,
            crash: Some(crash_tx),
            done: Some(done_rx),
            thread: Some(thread),
            exit: None,
        })
    }

    /// Delivers an operator signal (SIGTERM) to the launcher.
    pub async fn signal(&self) {
        let _ = self.signals.send(Signal::Terminate).await;
    }

    /// Kills the launcher without a goodbye.
    pub async fn crash(&mut self) -> NodeExit {
        if let Some(tx) = self.crash.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }

    /// Waits for the launcher to end (idempotent).
    pub async fn wait(&mut self) -> NodeExit {
        if let Some(exit) = &self.exit {
            return exit.clone();
        }
        // Borrow the receiver rather than take it: this future may be dropped half-way
        // (it races other events) and must be resumable.
        let exit = match self.done.as_mut() {
            Some(rx) => rx.await.unwrap_or(NodeExit::Exited {
                code: 101,
                error: Some("the launcher thread panicked".into()),
            }),
            None => NodeExit::Crashed,
        };
        self.done = None;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        self.exit = Some(exit.clone());
        exit
    }

    pub fn exited(&self) -> Option<&NodeExit> {
        self.exit.as_ref()
    }
}

impl Drop for LauncherNode {
    fn drop(&mut self) {
        if let Some(tx) = self.crash.take() {
            let _ = tx.send(());
        }
    }
}
