//! The binary's command line: help, version, and configuration errors that stop it before
//! any connection is made.

use std::process::Command;

fn launcher() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spacelift-launcher"));
    c.env_clear();
    c
}

#[test]
fn help_lists_the_environment_variables() {
    let out = launcher().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for var in [
        "SPACELIFT_TOKEN",
        "SPACELIFT_POOL_PRIVATE_KEY",
        "SPACELIFT_WORKER_NETWORK",
        "SPACELIFT_LAUNCHER_LOGS_TIMEOUT",
        "--capacity",
    ] {
        assert!(text.contains(var), "--help does not mention {var}:\n{text}");
    }
}

#[test]
fn version_prints_the_crate_version() {
    let out = launcher().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("spacelift-launcher {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_missing_token_exits_2_naming_the_variable() {
    let out = launcher().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SPACELIFT_TOKEN"), "{err}");
}

#[test]
fn a_bad_base64_token_names_the_byte_offset() {
    let out = launcher()
        .env("SPACELIFT_TOKEN", "abc!def")
        .env("SPACELIFT_POOL_PRIVATE_KEY", "eA==")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SPACELIFT_TOKEN") && err.contains("input byte 3"),
        "{err}"
    );
}

#[test]
fn capacity_zero_is_refused() {
    let out = launcher().args(["--capacity", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_configuration_error_is_a_json_error_line_off_a_terminal_plain_text_when_asked() {
    // stderr is a pipe here: auto means JSON, so error.log stays one object a line.
    let out = launcher().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let line: serde_json::Value = serde_json::from_str(err.trim()).expect(&err);
    assert_eq!(line["level"], "error", "{err}");
    assert!(line["msg"]
        .as_str()
        .unwrap()
        .starts_with("configuration error: SPACELIFT_TOKEN"));
    assert!(out.stdout.is_empty());
    // `text` forced: the plain line, as on a terminal.
    let out = launcher()
        .env("SPACELIFT_LAUNCHER_LOG_FORMAT", "text")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("spacelift-launcher: configuration error: SPACELIFT_TOKEN"),
        "{err}"
    );
}
