//! The binary's log lines on a stderr that is not a terminal (a file, a pipe, journald):
//! plain text without colour escapes, or JSON when asked.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use base64::Engine;
use protocol::token::{ApiConfig, BrokerConfig, Token};

/// A token and key that pass validation (a self-signed certificate for the key); nothing
/// listens at the endpoints.
fn credentials() -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let token = Token {
        broker: BrokerConfig {
            endpoint: "mqtts://127.0.0.1:1".into(),
        },
        api: ApiConfig {
            endpoint: "https://127.0.0.1:1".into(),
        },
        pool_ulid: "01HZY0000000000000000POOL1".into(),
        certificate: cert.pem(),
        ca_certificate: None,
        topic_namespace: None,
    }
    .encode();
    let key = base64::engine::general_purpose::STANDARD.encode(key.serialize_pem());
    (token, key)
}

/// Starts the launcher with stderr on a pipe and returns its first log line: the startup
/// warning about a whitelisted variable that is not set. Docker is unreachable, so nothing
/// else happens first.
fn first_log_line(extra: &[(&str, &str)]) -> String {
    let (token, key) = credentials();
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spacelift-launcher"))
        .env_clear()
        .env("SPACELIFT_TOKEN", token)
        .env("SPACELIFT_POOL_PRIVATE_KEY", key)
        .env("SPACELIFT_LAUNCHER_DATA_DIR", data.path())
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("SPACELIFT_WHITELIST_ENVS", "NOT_SET_ANYWHERE")
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting spacelift-launcher");
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("NOT_SET_ANYWHERE"), "first line: {line:?}");
    line
}

#[test]
fn text_logs_on_a_pipe_have_no_colour_escapes() {
    let line = first_log_line(&[]);
    assert!(!line.contains("\x1b["), "{line:?}");
    assert!(line.contains(" WARN "), "{line:?}");
}

#[test]
fn json_logs_are_json_without_colour_escapes() {
    let line = first_log_line(&[("SPACELIFT_LAUNCHER_LOG_FORMAT", "json")]);
    assert!(!line.contains("\x1b["), "{line:?}");
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON object per line");
    assert_eq!(v["level"], "WARN", "{line}");
    assert!(v["fields"]["message"]
        .as_str()
        .unwrap()
        .contains("NOT_SET_ANYWHERE"));
}
