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

/// The first line the launcher writes on each of stdout and stderr, both pipes: the startup
/// warning about a whitelisted variable that is not set (stderr), then the info line about
/// the initialization policy (stdout). Docker is unreachable, so nothing else happens first.
fn first_lines(extra: &[(&str, &str)]) -> (String, String) {
    let (token, key) = credentials();
    let data = tempfile::tempdir().unwrap();
    let policy = data.path().join("policy.rego");
    std::fs::write(
        &policy,
        "package spacelift\n\ndeny[msg] {\n  input.never\n  msg := \"never\"\n}\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spacelift-launcher"))
        .env_clear()
        .env("SPACELIFT_TOKEN", token)
        .env("SPACELIFT_POOL_PRIVATE_KEY", key)
        .env("SPACELIFT_LAUNCHER_DATA_DIR", data.path())
        // Without root, runs must be the test user's own (see SPACELIFT_LAUNCHER_RUN_USER).
        .envs(
            launcher::settings::RunUser::unprivileged_self()
                .map(|u| ("SPACELIFT_LAUNCHER_RUN_USER", u.to_string())),
        )
        .env("SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY", &policy)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("SPACELIFT_WHITELIST_ENVS", "NOT_SET_ANYWHERE")
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting spacelift-launcher");
    let first = |pipe: &mut dyn std::io::Read| {
        let mut line = String::new();
        BufReader::new(pipe).read_line(&mut line).unwrap();
        line
    };
    let err = first(child.stderr.as_mut().unwrap());
    let out = first(child.stdout.as_mut().unwrap());
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        err.contains("NOT_SET_ANYWHERE"),
        "first stderr line: {err:?}"
    );
    assert!(
        out.contains("initialization policy"),
        "first stdout line: {out:?}"
    );
    (out, err)
}

#[test]
fn text_logs_on_a_pipe_have_no_colour_escapes() {
    let (out, err) = first_lines(&[("SPACELIFT_LAUNCHER_LOG_FORMAT", "text")]);
    for line in [&out, &err] {
        assert!(!line.contains("\x1b["), "{line:?}");
    }
    assert!(err.contains(" WARN "), "{err:?}");
    assert!(out.contains(" INFO "), "{out:?}");
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"))
}

#[test]
fn json_logs_use_spacelift_field_names_warnings_on_stderr_info_on_stdout() {
    let (out, err) = first_lines(&[("SPACELIFT_LAUNCHER_LOG_FORMAT", "json")]);
    let (out, err) = (json(&out), json(&err));
    assert_eq!(err["level"], "warn", "{err}");
    assert!(err["msg"].as_str().unwrap().contains("NOT_SET_ANYWHERE"));
    assert!(err["caller"].as_str().unwrap().contains(".rs:"), "{err}");
    assert!(err["ts"].as_str().unwrap().ends_with('Z'), "{err}");
    assert_eq!(out["level"], "info", "{out}");
    assert!(
        out["policy"].as_str().unwrap().ends_with("policy.rego"),
        "{out}"
    );
}

#[test]
fn the_default_on_a_pipe_is_json_lines() {
    let (out, err) = first_lines(&[]);
    assert_eq!(json(&err)["level"], "warn", "{err}");
    assert_eq!(json(&out)["level"], "info", "{out}");
}
