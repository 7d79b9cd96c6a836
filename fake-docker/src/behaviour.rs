//! What a container "does" when started: scripted output, duration, exit code, OOM, hang.
//!
//! Chosen at start time, first match wins:
//! 1. the container's env var [`BEHAVIOUR_ENV`] holding a JSON [`Behaviour`];
//! 2. the installed [`Rule`]s, in order;
//! 3. the default: a tiny interpreter for `echo`, `true`, `false`, `sleep N`, `exit N`
//!    and `sh -c "a; b"` built from those; anything else exits 0 silently.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Env var a container can carry to pick its own behaviour (JSON [`Behaviour`]).
pub const BEHAVIOUR_ENV: &str = "FAKE_DOCKER_BEHAVIOUR";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The multiplexed-stream header byte.
    pub fn fd(self) -> u8 {
        match self {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        }
    }
}

/// One output line, written `delay_ms` after the previous one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    #[serde(default = "stdout")]
    pub stream: Stream,
    pub text: String,
    #[serde(default)]
    pub delay_ms: u64,
}

fn stdout() -> Stream {
    Stream::Stdout
}

/// A container's programmed behaviour. All fields are optional in JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// Ordered, possibly delayed, output on either stream.
    pub lines: Vec<Line>,
    /// Shorthand: lines on stdout, written after `lines`.
    pub stdout: Vec<String>,
    /// Shorthand: lines on stderr, written after `stdout`.
    pub stderr: Vec<String>,
    /// How long the process runs after writing its output.
    pub duration_ms: u64,
    pub exit_code: i64,
    /// Exit as the OOM killer would: code 137 and `State.OOMKilled = true`.
    pub oom_killed: bool,
    /// Never exit on its own: only kill/stop/rm -f end it.
    pub hang: bool,
    /// Ignore SIGTERM (like a PID 1 without a handler), so `stop` escalates to SIGKILL.
    pub ignore_sigterm: bool,
    /// Fail as a binary for another architecture would (see `exec_format_error_line`).
    pub exec_format_error: bool,
    /// Fail `start` with HTTP 400 and this message (e.g. `executable file not found in $PATH`).
    pub start_error: Option<String>,
    /// After the other output, a flood of generated stdout lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flood: Option<Flood>,
    /// Write the last output line without its newline.
    pub no_trailing_newline: bool,
}

/// `lines` stdout lines of exactly `line_bytes` bytes each (before the newline).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flood {
    pub lines: u32,
    pub line_bytes: usize,
}

impl Flood {
    /// Line `i` of the flood: its number, then filler up to `line_bytes`.
    pub fn line(&self, i: u32) -> String {
        let mut text = format!("flood line {i} ");
        let filler = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut k = 0;
        while text.len() < self.line_bytes {
            text.push(filler[k % filler.len()] as char);
            k += 1;
        }
        text.truncate(self.line_bytes);
        text
    }
}

impl Behaviour {
    pub fn output(&self) -> Vec<Line> {
        let mut out = self.lines.clone();
        let mk = |stream, text: &String| Line {
            stream,
            text: text.clone(),
            delay_ms: 0,
        };
        out.extend(self.stdout.iter().map(|t| mk(Stream::Stdout, t)));
        out.extend(self.stderr.iter().map(|t| mk(Stream::Stderr, t)));
        out
    }
}

/// Conditions a container must meet for a rule to apply; empty fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Match {
    /// `key -> value` labels that must all be present (`""` matches any value).
    pub labels: BTreeMap<String, String>,
    /// Image reference (normalised: `busybox` = `docker.io/library/busybox:latest`).
    pub image: Option<String>,
    /// `KEY -> value` env entries that must all be present (`""` matches any value).
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default, rename = "match")]
    pub matches: Match,
    pub behaviour: Behaviour,
}

/// What a rule is matched against.
pub struct Subject<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub image: &'a str,
    pub env: &'a [String],
}

fn env_value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find_map(|e| e.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

impl Match {
    pub fn matches(&self, s: &Subject<'_>) -> bool {
        let labels_ok = self.labels.iter().all(|(k, v)| match s.labels.get(k) {
            Some(actual) => v.is_empty() || actual == v,
            None => false,
        });
        let env_ok = self.env.iter().all(|(k, v)| match env_value(s.env, k) {
            Some(actual) => v.is_empty() || actual == v,
            None => false,
        });
        let image_ok = match &self.image {
            None => true,
            Some(want) => {
                let norm = |x: &str| {
                    crate::registry::Reference::parse(x)
                        .map(|r| r.to_string())
                        .unwrap_or_else(|_| x.to_string())
                };
                norm(want) == norm(s.image)
            }
        };
        labels_ok && env_ok && image_ok
    }
}

/// Picks the behaviour: env var, then rules, then the command interpreter.
pub fn choose(rules: &[Rule], subject: &Subject<'_>, path: &str, args: &[String]) -> Behaviour {
    if let Some(json) = env_value(subject.env, BEHAVIOUR_ENV) {
        match serde_json::from_str::<Behaviour>(json) {
            Ok(b) => return b,
            Err(e) => {
                return Behaviour {
                    stderr: vec![format!("fake-docker: invalid {BEHAVIOUR_ENV}: {e}")],
                    exit_code: 125,
                    ..Behaviour::default()
                }
            }
        }
    }
    if let Some(rule) = rules.iter().find(|r| r.matches.matches(subject)) {
        return rule.behaviour.clone();
    }
    let mut argv = vec![path.to_string()];
    argv.extend(args.iter().cloned());
    interpret(&argv)
}

/// The default behaviour: a few shell built-ins, enough for `echo hi` and `sh -c 'exit 3'`.
pub fn interpret(argv: &[String]) -> Behaviour {
    let mut b = Behaviour::default();
    let mut rest: Vec<Vec<String>> = vec![argv.to_vec()];
    // `sh -c "a; b"`: split the script into simple commands.
    if let [sh, flag, script, ..] = argv {
        if base(sh) == "sh" && flag == "-c" {
            rest = script
                .split([';', '\n'])
                .map(|c| c.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .filter(|c| !c.is_empty())
                .collect();
        }
    }
    for cmd in rest {
        let Some(first) = cmd.first() else { continue };
        let mut words: Vec<&str> = cmd[1..].iter().map(String::as_str).collect();
        let to_stderr = words.last().is_some_and(|w| *w == ">&2" || *w == "1>&2");
        if to_stderr {
            words.pop();
        }
        match base(first) {
            "echo" => {
                let text = words
                    .iter()
                    .map(|w| w.trim_matches(|c| c == '"' || c == '\''))
                    .collect::<Vec<_>>()
                    .join(" ");
                b.lines.push(Line {
                    stream: if to_stderr {
                        Stream::Stderr
                    } else {
                        Stream::Stdout
                    },
                    text,
                    delay_ms: 0,
                });
            }
            "true" => b.exit_code = 0,
            "false" => {
                b.exit_code = 1;
                return b;
            }
            "sleep" => {
                let secs: f64 = words.first().and_then(|s| s.parse().ok()).unwrap_or(0.0);
                // A PID 1 without handlers ignores SIGTERM, as busybox sleep does.
                b.ignore_sigterm = true;
                if secs.is_finite() && secs >= 0.0 {
                    b.duration_ms += (secs * 1000.0) as u64;
                }
                if words.first().is_some_and(|w| *w == "infinity") {
                    b.hang = true;
                }
            }
            "exit" => {
                b.exit_code = words.first().and_then(|s| s.parse().ok()).unwrap_or(0);
                return b;
            }
            _ => {}
        }
    }
    b
}

fn base(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The stderr line runc writes for a binary of the wrong architecture.
pub fn exec_format_error_line(path: &str) -> String {
    format!("exec {path}: exec format error")
}

/// Architecture named by an ELF header's `e_machine`, if the bytes are an ELF header.
pub fn elf_arch(header: &[u8]) -> Option<&'static str> {
    if header.len() < 20 || &header[..4] != b"\x7fELF" {
        return None;
    }
    let machine = match header[5] {
        2 => u16::from_be_bytes([header[18], header[19]]),
        _ => u16::from_le_bytes([header[18], header[19]]),
    };
    match machine {
        0x3E => Some("amd64"),
        0xB7 => Some("arm64"),
        0x28 => Some("arm"),
        0x03 => Some("386"),
        _ => Some("unknown"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn interprets_simple_commands() {
        let b = interpret(&argv(&["echo", "hi", "there"]));
        assert_eq!(b.output()[0].text, "hi there");
        let b = interpret(&argv(&["sh", "-c", "echo out; echo err >&2; exit 3"]));
        assert_eq!(b.exit_code, 3);
        assert_eq!(b.output()[1].stream, Stream::Stderr);
        let b = interpret(&argv(&["sleep", "2"]));
        assert_eq!(b.duration_ms, 2000);
    }

    #[test]
    fn env_overrides_rules() {
        let env = vec![format!("{BEHAVIOUR_ENV}={{\"exit_code\":7}}")];
        let labels = BTreeMap::new();
        let s = Subject {
            labels: &labels,
            image: "busybox",
            env: &env,
        };
        let rules = vec![Rule {
            matches: Match::default(),
            behaviour: Behaviour {
                exit_code: 1,
                ..Default::default()
            },
        }];
        assert_eq!(choose(&rules, &s, "x", &[]).exit_code, 7);
    }

    #[test]
    fn flood_lines_have_the_asked_length_and_their_number() {
        let f = Flood {
            lines: 3,
            line_bytes: 100,
        };
        assert_eq!(f.line(2).len(), 100);
        assert!(f.line(2).starts_with("flood line 2 "));
        let short = Flood {
            lines: 1,
            line_bytes: 5,
        };
        assert_eq!(short.line(0), "flood");
    }

    #[test]
    fn reads_elf_machine() {
        let mut h = vec![0u8; 20];
        h[..4].copy_from_slice(b"\x7fELF");
        h[5] = 1;
        h[18] = 0xB7;
        assert_eq!(elf_arch(&h), Some("arm64"));
        assert_eq!(elf_arch(b"#!/bin/sh"), None);
    }
}
