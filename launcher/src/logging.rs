//! The launcher's own log lines (stderr): which events pass, and how they look.
//!
//! `SPACELIFT_DEBUG=true` opens the launcher's own debug events (Docker calls made, run
//! state changes, MQTT messages by kind) and nothing else: dependencies stay at `info`
//! even when `RUST_LOG` asks for more, since they log request bodies and headers. Colour
//! only on a terminal; `SPACELIFT_LAUNCHER_LOG_FORMAT=json` writes one JSON object a line.

use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::LogFormat;

/// How the launcher logs: `SPACELIFT_LAUNCHER_LOG_FORMAT`, `SPACELIFT_DEBUG`, `RUST_LOG`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogOptions {
    pub format: LogFormat,
    /// `SPACELIFT_DEBUG`.
    pub debug: bool,
    /// `RUST_LOG`, if set: overrides the default levels.
    pub directives: Option<String>,
}

impl LogOptions {
    /// The options from the configuration, with `RUST_LOG` from the process.
    pub fn from_process(format: LogFormat, debug: bool) -> LogOptions {
        LogOptions {
            format,
            debug,
            directives: std::env::var("RUST_LOG").ok().filter(|d| !d.is_empty()),
        }
    }
}

/// Targets whose debug events are ours: the library (`launcher::...`) and the binary.
/// They log identifiers, states and decisions, never env values or request bodies.
const OURS: &[&str] = &["launcher", "spacelift_launcher"];

fn is_ours(target: &str) -> bool {
    OURS.iter().any(|ours| {
        target
            .strip_prefix(ours)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// The levels asked for: `RUST_LOG` if set (and valid), else `info`, with the launcher's
/// own targets at `debug` under `SPACELIFT_DEBUG`.
fn requested(opts: &LogOptions) -> EnvFilter {
    let default = if opts.debug {
        "info,launcher=debug,spacelift_launcher=debug"
    } else {
        "info"
    };
    opts.directives
        .as_deref()
        .and_then(|d| EnvFilter::try_new(d).ok())
        .unwrap_or_else(|| EnvFilter::new(default))
}

/// Dependencies never pass `info`, whatever was asked: bollard logs whole request and
/// response bodies at debug/trace (a container's `Env`, with whitelisted secrets), and
/// the HTTP/TLS/MQTT stacks log headers and payloads.
fn capped(meta: &tracing::Metadata<'_>) -> bool {
    is_ours(meta.target()) || *meta.level() <= tracing::Level::INFO
}

/// The subscriber the binary installs, writing to `writer`. Colour escapes only when
/// `terminal` (the writer is a terminal): a file or journald gets plain text.
pub fn subscriber<W>(
    opts: &LogOptions,
    writer: W,
    terminal: bool,
) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(terminal && opts.format == LogFormat::Text);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match opts.format {
        LogFormat::Json => Box::new(fmt.json()),
        LogFormat::Text => Box::new(fmt),
    };
    let filter = requested(opts).and(filter_fn(capped));
    tracing_subscriber::registry().with(fmt.with_filter(filter))
}

/// Installs [`subscriber`] for the process (and forwards the `log` records of
/// dependencies to it). Fails if a subscriber is already installed.
pub fn try_init_with<W>(
    opts: &LogOptions,
    writer: W,
    terminal: bool,
) -> Result<(), tracing_subscriber::util::TryInitError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    subscriber(opts, writer, terminal).try_init()
}

/// Installs the launcher's logging on stderr (stdout is kept for run logs,
/// `SPACELIFT_RUN_LOGS_ON_STANDARD_OUTPUT_ENABLED`).
pub fn init(opts: &LogOptions) {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let _ = try_init_with(opts, std::io::stderr, terminal);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn emit(opts: &LogOptions, terminal: bool) -> String {
        let out = Capture::default();
        let writer = out.clone();
        let sub = subscriber(opts, move || writer.clone(), terminal);
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(target: "launcher::app", run = "R1", "a warning");
            tracing::info!(target: "launcher::app", "an info");
        });
        out.text()
    }

    #[test]
    fn text_to_a_file_or_journald_has_no_colour() {
        let text = emit(&LogOptions::default(), false);
        assert!(
            text.contains("a warning") && text.contains("an info"),
            "{text}"
        );
        assert!(!text.contains("\x1b["), "{text:?}");
        // On a terminal the level is coloured, as before.
        let text = emit(&LogOptions::default(), true);
        assert!(text.contains("\x1b["), "{text:?}");
    }

    #[test]
    fn json_is_one_object_per_line_without_colour() {
        let opts = LogOptions {
            format: LogFormat::Json,
            ..LogOptions::default()
        };
        for terminal in [false, true] {
            let text = emit(&opts, terminal);
            assert!(!text.contains("\x1b["), "{text:?}");
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).expect(l))
                .collect();
            assert_eq!(lines.len(), 2, "{text}");
            assert_eq!(lines[0]["level"], "WARN");
            assert_eq!(lines[0]["fields"]["message"], "a warning");
            assert_eq!(lines[0]["fields"]["run"], "R1");
        }
    }

    /// Which of a few probe events pass with `opts`.
    fn passing(opts: &LogOptions) -> Vec<&'static str> {
        let out = Capture::default();
        let writer = out.clone();
        let sub = subscriber(opts, move || writer.clone(), false);
        tracing::subscriber::with_default(sub, || {
            tracing::debug!(target: "launcher::docker", "probe-ours-debug");
            tracing::trace!(target: "launcher::run", "probe-ours-trace");
            tracing::debug!(target: "spacelift_launcher", "probe-main-debug");
            tracing::debug!(target: "bollard::docker", "probe-bollard-debug");
            tracing::trace!(target: "hyper_util::client", "probe-hyper-trace");
            tracing::info!(target: "rumqttc::state", "probe-rumqttc-info");
            tracing::warn!(target: "reqwest::connect", "probe-reqwest-warn");
            tracing::debug!(target: "launcherish", "probe-lookalike-debug");
        });
        let text = out.text();
        [
            "probe-ours-debug",
            "probe-ours-trace",
            "probe-main-debug",
            "probe-bollard-debug",
            "probe-hyper-trace",
            "probe-rumqttc-info",
            "probe-reqwest-warn",
            "probe-lookalike-debug",
        ]
        .into_iter()
        .filter(|p| text.contains(p))
        .collect()
    }

    #[test]
    fn debug_opens_the_launcher_only_and_caps_dependencies_at_info() {
        let plain = LogOptions::default();
        assert_eq!(
            passing(&plain),
            ["probe-rumqttc-info", "probe-reqwest-warn"]
        );
        let debug = LogOptions {
            debug: true,
            ..LogOptions::default()
        };
        assert_eq!(
            passing(&debug),
            [
                "probe-ours-debug",
                "probe-main-debug",
                "probe-rumqttc-info",
                "probe-reqwest-warn"
            ]
        );
        // RUST_LOG may lower levels but never opens a dependency past info: they log
        // request and response bodies (a container's Env, registry credentials).
        let rust_log = |d: &str| LogOptions {
            directives: Some(d.into()),
            ..LogOptions::default()
        };
        assert_eq!(
            passing(&rust_log("trace")),
            [
                "probe-ours-debug",
                "probe-ours-trace",
                "probe-main-debug",
                "probe-rumqttc-info",
                "probe-reqwest-warn"
            ]
        );
        assert_eq!(
            passing(&rust_log("bollard=trace,hyper_util=trace,launcher=trace")),
            ["probe-ours-debug", "probe-ours-trace"]
        );
        let quiet = LogOptions {
            directives: Some("warn".into()),
            ..LogOptions::default()
        };
        assert_eq!(passing(&quiet), ["probe-reqwest-warn"]);
    }
}
