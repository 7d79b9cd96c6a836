//! The `fake-backend` binary: `pool create` with a real `openssl req -newkey rsa:4096`
//! CSR (and the resulting 4096-bit PKCS#8 key working over mTLS), `--generate-key`, a bad
//! CSR, and `serve` driven through the admin CLI.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use fake_backend::FakeBackend;

const BIN: &str = env!("CARGO_BIN_EXE_fake-backend");

fn fake_backend(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("runs fake-backend")
}

fn value_of(stdout: &str, key: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
}

fn have_openssl() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn pool_create_signs_an_openssl_rsa4096_csr_and_the_key_works() {
    use protocol::test_support::{require_component, INSTALL_DEPS};
    if !require_component(have_openssl(), "openssl", INSTALL_DEPS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = dir.path().join("spacelift.key");
    let csr = dir.path().join("spacelift.csr");
    // Exactly what Spacelift's docs tell operators to run.
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "rsa:4096",
            "-nodes",
            "-subj",
            "/CN=workers.spacelift.io",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key_pem = std::fs::read_to_string(&key).unwrap();
    assert!(key_pem.contains("BEGIN PRIVATE KEY"), "PKCS#8");

    let out = fake_backend(&[
        "pool",
        "create",
        "--data-dir",
        data.to_str().unwrap(),
        "--csr",
        csr.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token_b64 = value_of(&stdout, "SPACELIFT_TOKEN").expect("prints SPACELIFT_TOKEN");
    assert!(
        value_of(&stdout, "SPACELIFT_POOL_PRIVATE_KEY").is_none(),
        "the operator keeps the key"
    );
    let token = protocol::token::Token::decode("SPACELIFT_TOKEN", &token_b64).unwrap();
    let der = fake_backend::pki::first_cert_der(&token.certificate).unwrap();
    assert_eq!(
        fake_backend::pki::common_name(&der).as_deref(),
        Some(token.pool_ulid.as_str())
    );
    assert!(token.ca_certificate.is_some());

    // Serve that data dir; the operator's key (as SPACELIFT_POOL_PRIVATE_KEY: base64 -w0
    // of the PEM) with the token's certificate registers over mTLS and connects to MQTT.
    let b = FakeBackend::start(config(&data)).await.unwrap();
    let live_token = b.token_for(&token.pool_ulid).unwrap();
    let creds = Creds::from_env_values(&live_token, &b64(&key_pem));
    assert_eq!(creds.identity.cert_pem, token.certificate);
    let (w, _m) = online_worker(&b, &creds, 1).await;
    assert_eq!(b.worker(&w).unwrap().pool, token.pool_ulid);
    b.shutdown().await;
}

#[test]
fn pool_create_generates_a_key_and_refuses_a_bad_csr() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = fake_backend(&[
        "pool",
        "create",
        "--data-dir",
        data.to_str().unwrap(),
        "--generate-key",
        "--key-bits",
        "2048",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key = value_of(&stdout, "SPACELIFT_POOL_PRIVATE_KEY").expect("prints the key");
    let pem = protocol::token::decode_private_key_pem("SPACELIFT_POOL_PRIVATE_KEY", &key).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    protocol::token::Token::decode(
        "SPACELIFT_TOKEN",
        &value_of(&stdout, "SPACELIFT_TOKEN").unwrap(),
    )
    .unwrap();

    let bad = dir.path().join("bad.csr");
    std::fs::write(
        &bad,
        "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n",
    )
    .unwrap();
    let out = fake_backend(&[
        "pool",
        "create",
        "--data-dir",
        data.to_str().unwrap(),
        "--csr",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate signing request"), "{err}");
    let out = fake_backend(&[
        "pool",
        "create",
        "--data-dir",
        data.to_str().unwrap(),
        "--csr",
        "/nonexistent.csr",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading CSR"));
}

struct Served {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn start(data: &Path) -> Served {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--data-dir",
                data.to_str().unwrap(),
                "--mqtt-bind",
                "127.0.0.1:0",
                "--https-bind",
                "127.0.0.1:0",
                "--key-bits",
                "2048",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Served { child, lines }
    }

    fn wait_line(&self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .expect("serve prints");
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
    }
}

#[tokio::test]
async fn serve_prints_working_credentials_and_the_cli_drives_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let served = Served::start(&data);
    let pool = served.wait_line("SPACELIFT_POOL_ULID=");
    let token = served.wait_line("SPACELIFT_TOKEN=");
    let key = served.wait_line("SPACELIFT_POOL_PRIVATE_KEY=");
    let creds = Creds::from_env_values(&token, &key);
    let api = creds.http();
    let w = api.register(1, None).await.worker_ulid;
    let mut m = Mqtt::connect(&creds, &w).await;
    m.heartbeat(protocol::messages::WorkerState::Idle, vec![], 1)
        .await;

    let d = data.to_str().unwrap();
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--data-dir", d]);
        let out = fake_backend(&all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // Scheduled now or once the heartbeat lands: either way the worker gets it.
    let out = cli(&[
        "run",
        "schedule",
        "--pool",
        &pool,
        "--image",
        "busybox",
        "--env",
        "SPACELIFT_TEST_EXIT_CODE=3",
    ]);
    let run: serde_json::Value = serde_json::from_str(&out).unwrap();
    let run = run["run_ulid"].as_str().unwrap().to_string();
    assert_eq!(run_scheduled(&m.next_message().await), Some(run.as_str()));
    let claim = api.claim(&run, &w).await.unwrap();
    assert_eq!(claim.run.env["SPACELIFT_TEST_EXIT_CODE"], "3");

    let out = cli(&[
        "version",
        "publish",
        "--arch",
        "amd64",
        "--shell",
        "--version",
        "9.0.0",
    ]);
    assert!(out.contains("\"9.0.0\""), "{out}");
    assert!(matches!(
        m.next_message().await,
        protocol::messages::ServerMessage::BinaryPublished { .. }
    ));
    cli(&["worker", "drain", &w]);
    assert!(matches!(
        m.next_message().await,
        protocol::messages::ServerMessage::Drain { .. }
    ));
    cli(&["fault", "http", "--status", "503", "--retry-after", "2"]);
    assert_eq!(api.renew(&run, &w).await.unwrap_err().status, 503);
    cli(&["run", "cancel", &run]);
    assert!(matches!(
        m.next_message().await,
        protocol::messages::ServerMessage::RunCancel { .. }
    ));
    let events = cli(&["events", "--kind", "claim."]);
    let ev: serde_json::Value = serde_json::from_str(events.lines().next().unwrap()).unwrap();
    assert_eq!(ev["kind"], "claim.granted");
    let show: serde_json::Value = serde_json::from_str(&cli(&["run", "show", &run])).unwrap();
    assert_eq!(show["state"], "claimed");
    assert!(show["cancel_requested"].as_bool().unwrap());
    // A pool created while serving goes through the admin API and works at once.
    let out = cli(&["pool", "create", "--generate-key", "--key-bits", "2048"]);
    let creds2 = Creds::from_env_values(
        &value_of(&out, "SPACELIFT_TOKEN").unwrap(),
        &value_of(&out, "SPACELIFT_POOL_PRIVATE_KEY").unwrap(),
    );
    creds2.http().register(1, None).await;
    drop(served);
    // Offline, events still read from events.jsonl.
    assert!(cli(&["events", "--kind", "run.created"]).contains(&run));
}
