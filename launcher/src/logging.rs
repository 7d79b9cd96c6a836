//! The launcher's own log lines: which events pass, how they look, and where they go.
//!
//! `SPACELIFT_DEBUG=true` opens the launcher's own debug events (Docker calls made, run
//! state changes, MQTT messages by kind) and nothing else: dependencies stay at `info`
//! even when `RUST_LOG` asks for more, since they log request bodies and headers. The
//! filter is the same in every format.
//!
//! `SPACELIFT_LAUNCHER_LOG_FORMAT`: `auto` (default) is text on a terminal and JSON lines
//! otherwise (a file, a pipe, journald: what a log shipper reads); colour only when both
//! streams are terminals. In every format `warn` and `error` go to standard error and `info`, `debug`
//! to standard output, so a unit that splits the streams (Spacelift's send them to
//! `error.log` and `info.log`) gets the problems apart.

mod json;

use tracing::Level;
use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::fmt::writer::MakeWriterExt;
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

/// Whether the process's standard streams are terminals; injected so that tests do not
/// depend on their own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Terminals {
    pub stdout: bool,
    pub stderr: bool,
}

impl Terminals {
    pub fn of_process() -> Terminals {
        use std::io::IsTerminal;
        Terminals {
            stdout: std::io::stdout().is_terminal(),
            stderr: std::io::stderr().is_terminal(),
        }
    }
}

/// What a [`LogFormat`] comes to on given streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Colour escapes only when both streams are terminals: never in a file.
    Text {
        colour: bool,
    },
    Json,
}

impl Style {
    /// `auto` follows standard error, where the problems go: a terminal means someone
    /// reads it, anything else means a file, a pipe or journald, read by a shipper.
    pub fn resolve(format: LogFormat, terminals: Terminals) -> Style {
        match format {
            LogFormat::Json => Style::Json,
            LogFormat::Auto if !terminals.stderr => Style::Json,
            LogFormat::Auto | LogFormat::Text => Style::Text {
                colour: terminals.stderr && terminals.stdout,
            },
        }
    }

    /// The style for a message printed before the configuration is validated: the
    /// variable's value if it names a format, else `auto`.
    pub fn before_config(raw: Option<&str>, terminals: Terminals) -> Style {
        Style::resolve(
            raw.and_then(LogFormat::parse).unwrap_or_default(),
            terminals,
        )
    }
}

/// The subscriber the binary installs: `warn` and `error` to `errors` (stderr), the rest
/// to `info` (stdout).
pub fn subscriber<I, E>(
    opts: &LogOptions,
    info: I,
    errors: E,
    terminals: Terminals,
) -> impl tracing::Subscriber + Send + Sync + 'static
where
    I: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    E: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let writer = errors.with_max_level(Level::WARN).or_else(info);
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match Style::resolve(opts.format, terminals) {
        Style::Json => Box::new(
            fmt.with_ansi(false)
                .fmt_fields(JsonFields::new())
                .event_format(json::JsonLines),
        ),
        Style::Text { colour } => Box::new(fmt.with_ansi(colour)),
    };
    let filter = requested(opts).and(filter_fn(capped));
    tracing_subscriber::registry().with(fmt.with_filter(filter))
}

/// Installs [`subscriber`] for the process (and forwards the `log` records of
/// dependencies to it). Fails if a subscriber is already installed.
pub fn try_init_with<I, E>(
    opts: &LogOptions,
    info: I,
    errors: E,
    terminals: Terminals,
) -> Result<(), tracing_subscriber::util::TryInitError>
where
    I: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    E: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    subscriber(opts, info, errors, terminals).try_init()
}

/// Installs the launcher's logging on the process's standard streams; returns the style
/// chosen, for [`last_word`]. Run logs echoed on stdout
/// (`SPACELIFT_RUN_LOGS_ON_STANDARD_OUTPUT_ENABLED`) share it with `info` lines: each is
/// written whole under stdout's lock, and they are told apart by having no `level`.
pub fn init(opts: &LogOptions) -> Style {
    let terminals = Terminals::of_process();
    let _ = try_init_with(opts, std::io::stdout, std::io::stderr, terminals);
    Style::resolve(opts.format, terminals)
}

/// What the launcher prints itself on its way out (a configuration error, a runtime
/// failure, a third signal), on stderr and past any filter: `spacelift-launcher: ...` in
/// text, an `error` line in JSON, so that error.log stays one object a line.
#[track_caller]
pub fn last_word(style: Style, msg: &str) {
    eprintln!(
        "{}",
        last_word_line(style, msg, std::panic::Location::caller())
    );
}

fn last_word_line(style: Style, msg: &str, at: &std::panic::Location<'_>) -> String {
    match style {
        Style::Text { .. } => format!("spacelift-launcher: {msg}"),
        Style::Json => json::line(
            &json::now(),
            json::level(&Level::ERROR),
            msg,
            &format!("{}:{}", at.file(), at.line()),
            &serde_json::Map::new(),
        ),
    }
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

    /// What went to the info writer (stdout) and to the error writer (stderr).
    struct Streams {
        info: String,
        errors: String,
    }

    impl Streams {
        fn both(&self) -> String {
            format!("{}{}", self.info, self.errors)
        }
    }

    fn capture(opts: &LogOptions, terminals: Terminals, events: impl FnOnce()) -> Streams {
        let (info, errors) = (Capture::default(), Capture::default());
        let (i, e) = (info.clone(), errors.clone());
        let sub = subscriber(opts, move || i.clone(), move || e.clone(), terminals);
        tracing::subscriber::with_default(sub, events);
        Streams {
            info: info.text(),
            errors: errors.text(),
        }
    }

    fn with_format(format: LogFormat) -> LogOptions {
        LogOptions {
            format,
            ..LogOptions::default()
        }
    }

    const NOT_A_TERMINAL: Terminals = Terminals {
        stdout: false,
        stderr: false,
    };
    const TERMINALS: Terminals = Terminals {
        stdout: true,
        stderr: true,
    };

    fn emit(opts: &LogOptions, terminals: Terminals) -> Streams {
        capture(opts, terminals, || {
            tracing::error!(target: "launcher::app", "an error");
            tracing::warn!(target: "launcher::app", run = "R1", "a warning");
            tracing::info!(target: "launcher::app", "an info");
        })
    }

    fn json_lines(text: &str) -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).expect(l))
            .collect()
    }

    #[test]
    fn text_to_a_file_or_journald_has_no_colour() {
        let text = emit(&with_format(LogFormat::Text), NOT_A_TERMINAL).both();
        assert!(
            text.contains("a warning") && text.contains("an info"),
            "{text}"
        );
        assert!(!text.contains("\x1b["), "{text:?}");
        // On a terminal the level is coloured, as before.
        let text = emit(&with_format(LogFormat::Text), TERMINALS).both();
        assert!(text.contains("\x1b["), "{text:?}");
    }

    #[test]
    fn json_lines_carry_ts_level_msg_caller_and_the_fields_flat() {
        let out = capture(&with_format(LogFormat::Json), TERMINALS, || {
            let span = tracing::info_span!(target: "launcher::run", "run", run_ulid = "01RUN");
            let _entered = span.enter();
            tracing::warn!(target: "launcher::run", attempt = 2, ok = false, "retrying {}", "now");
        });
        let caller = format!("launcher/src/logging.rs:{}", line!() - 2);
        assert!(!out.errors.contains("\x1b["), "{:?}", out.errors);
        let lines = json_lines(&out.errors);
        assert_eq!(lines.len(), 1, "{}", out.errors);
        let line = lines[0].as_object().unwrap();
        let keys: Vec<&str> = line.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["attempt", "caller", "level", "msg", "ok", "run_ulid", "ts"],
            "{line:?}"
        );
        assert_eq!(line["level"], "warn");
        assert_eq!(line["msg"], "retrying now");
        assert_eq!(line["caller"], caller.as_str());
        assert_eq!(line["attempt"], 2);
        assert_eq!(line["ok"], false);
        assert_eq!(line["run_ulid"], "01RUN");
        // RFC 3339, UTC, with fractional seconds.
        let ts = line["ts"].as_str().unwrap();
        let parsed =
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                .expect(ts);
        assert_eq!(parsed.offset(), time::UtcOffset::UTC, "{ts}");
        assert!(ts.ends_with('Z') && ts.contains('.'), "{ts}");
        // The fixed keys come first, in Spacelift's order (serde_json's map sorts them).
        let at = |key: &str| out.errors.find(&format!("\"{key}\":")).unwrap();
        assert!(out.errors.starts_with("{\"ts\":"), "{}", out.errors);
        assert!(
            at("ts") < at("level") && at("level") < at("msg"),
            "{}",
            out.errors
        );
        assert!(
            at("msg") < at("caller") && at("caller") < at("attempt"),
            "{}",
            out.errors
        );
    }

    #[test]
    fn every_level_is_spelled_in_lowercase() {
        let opts = LogOptions {
            format: LogFormat::Json,
            debug: true,
            directives: None,
        };
        let out = capture(&opts, NOT_A_TERMINAL, || {
            tracing::debug!(target: "launcher::app", "d");
            tracing::info!(target: "launcher::app", "i");
            tracing::warn!(target: "launcher::app", "w");
            tracing::error!(target: "launcher::app", "e");
        });
        let levels = |text: &str| -> Vec<String> {
            json_lines(text)
                .iter()
                .map(|l| l["level"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(levels(&out.info), ["debug", "info"]);
        assert_eq!(levels(&out.errors), ["warn", "error"]);
    }

    #[test]
    fn warnings_and_errors_go_to_stderr_info_to_stdout_in_every_format() {
        for format in [LogFormat::Text, LogFormat::Json, LogFormat::Auto] {
            for terminals in [NOT_A_TERMINAL, TERMINALS] {
                let out = emit(&with_format(format), terminals);
                let what = format!(
                    "{format:?} {terminals:?}: {:?} / {:?}",
                    out.info, out.errors
                );
                assert!(out.errors.contains("an error"), "{what}");
                assert!(out.errors.contains("a warning"), "{what}");
                assert!(!out.errors.contains("an info"), "{what}");
                assert!(out.info.contains("an info"), "{what}");
                assert!(!out.info.contains("a warning"), "{what}");
                assert!(!out.info.contains("an error"), "{what}");
            }
        }
    }

    #[test]
    fn auto_is_json_off_a_terminal_and_plain_text_on_one() {
        let auto = with_format(LogFormat::Auto);
        let out = emit(&auto, NOT_A_TERMINAL);
        let lines = json_lines(&out.errors);
        assert_eq!(lines[1]["msg"], "a warning", "{:?}", out.errors);
        assert_eq!(json_lines(&out.info)[0]["level"], "info");
        let out = emit(&auto, TERMINALS);
        assert!(serde_json::from_str::<serde_json::Value>(out.info.trim()).is_err());
        assert!(out.errors.contains(" WARN ") || out.errors.contains("WARN\x1b"));
        // The decision follows standard error only: stdout alone on a terminal is not it.
        let stdout_only = Terminals {
            stdout: true,
            stderr: false,
        };
        assert!(json_lines(&emit(&auto, stdout_only).info).len() == 1);
        // text and json force it.
        let out = emit(&with_format(LogFormat::Text), NOT_A_TERMINAL);
        assert!(out.errors.contains(" WARN "), "{:?}", out.errors);
        let out = emit(&with_format(LogFormat::Json), TERMINALS);
        assert_eq!(json_lines(&out.errors).len(), 2, "{:?}", out.errors);
    }

    #[test]
    fn a_field_named_like_a_fixed_key_does_not_overwrite_it() {
        let out = capture(&with_format(LogFormat::Json), NOT_A_TERMINAL, || {
            tracing::info!(target: "launcher::app", level = "mine", ts = 1, "the message");
        });
        let line = &json_lines(&out.info)[0];
        assert_eq!(line["level"], "info");
        assert_eq!(line["fields.level"], "mine");
        assert_eq!(line["fields.ts"], 1);
        assert_eq!(line["msg"], "the message");
    }

    #[test]
    fn the_last_word_is_a_json_error_line_or_plain_text() {
        let at = std::panic::Location::caller();
        let line = last_word_line(Style::Json, "configuration error: bad \"x\"", at);
        let v: serde_json::Value = serde_json::from_str(&line).expect(&line);
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "configuration error: bad \"x\"");
        assert_eq!(v["caller"], format!("{}:{}", at.file(), at.line()));
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
        let text = last_word_line(Style::Text { colour: true }, "third signal", at);
        assert_eq!(text, "spacelift-launcher: third signal");
        // Before the configuration is valid: the variable if it names a format, else auto.
        assert_eq!(
            Style::before_config(Some("xml"), NOT_A_TERMINAL),
            Style::Json
        );
        assert_eq!(
            Style::before_config(Some("TEXT"), NOT_A_TERMINAL),
            Style::Text { colour: false }
        );
        assert_eq!(
            Style::before_config(None, TERMINALS),
            Style::Text { colour: true }
        );
    }

    /// Which of a few probe events pass with `opts`.
    fn passing(opts: &LogOptions) -> Vec<&'static str> {
        let text = capture(opts, NOT_A_TERMINAL, || {
            tracing::debug!(target: "launcher::docker", "probe-ours-debug");
            tracing::trace!(target: "launcher::run", "probe-ours-trace");
            tracing::debug!(target: "spacelift_launcher", "probe-main-debug");
            tracing::debug!(target: "bollard::docker", "probe-bollard-debug");
            tracing::trace!(target: "hyper_util::client", "probe-hyper-trace");
            tracing::info!(target: "rumqttc::state", "probe-rumqttc-info");
            tracing::warn!(target: "reqwest::connect", "probe-reqwest-warn");
            tracing::debug!(target: "launcherish", "probe-lookalike-debug");
        })
        .both();
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
        // The filter is the same whatever the format.
        for format in [LogFormat::Text, LogFormat::Json, LogFormat::Auto] {
            let plain = with_format(format);
            assert_eq!(
                passing(&plain),
                ["probe-rumqttc-info", "probe-reqwest-warn"]
            );
            let debug = LogOptions {
                debug: true,
                ..with_format(format)
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
                ..with_format(format)
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
            assert_eq!(passing(&rust_log("warn")), ["probe-reqwest-warn"]);
        }
    }
}
