//! `SPACELIFT_DEBUG=true` must not print secrets: the launcher's logging, installed as the
//! binary installs it, while a run container carrying a whitelisted secret is created and
//! an image is pulled with registry credentials (given, and from credential helpers that
//! answer or fail), through bollard against fake-docker.
//!
//! One test per process: it installs the process-wide subscriber (text), then repeats
//! the calls under a thread-scoped JSON one (the runtime is single-threaded, and the
//! `log` bridge forwards to the thread's subscriber).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use fake_docker::{Config, FakeDocker};
use launcher::config::LogFormat;
use launcher::container_spec::{self, Ids};
use launcher::docker::BollardRuntime;
use launcher::logging::{self, LogOptions, Terminals};
use launcher::ports::{CachedBinary, ContainerRuntime, RegistryAuth};
use launcher::settings::{MountScope, PassedEnv, Settings};
use protocol::api::{RunSpec, RunType};

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

const PASSED_SECRET: &str = "whitelisted-and-masked-s3cret";
const STACK_SECRET: &str = "stack-env-s3cret";
const REGISTRY_PASSWORD: &str = "registry-pa55word";
const HELPER_SECRET: &str = "helper-answered-s3cret";
const FAILING_HELPER_SECRET: &str = "failing-helper-echoed-s3cret";

/// A config.json whose credHelpers send two registries to our own helper scripts: one
/// answers credentials, one fails echoing a secret on both its streams.
fn helper_config() -> (tempfile::TempDir, launcher::cred_helper::HelperPath) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let scripts = [
        (
            "good",
            format!(r#"cat >/dev/null; echo '{{"Username":"robot","Secret":"{HELPER_SECRET}"}}'"#),
        ),
        (
            "bad",
            format!("echo {FAILING_HELPER_SECRET}; echo {FAILING_HELPER_SECRET} >&2; exit 1"),
        ),
    ];
    for (name, body) in scripts {
        let path = dir.path().join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"credHelpers":{"good.example.com":"good","bad.example.com":"bad"}}"#,
    )
    .unwrap();
    let helpers = launcher::cred_helper::HelperPath::dirs(dir.path());
    (dir, helpers)
}

#[tokio::test]
async fn debug_logging_never_prints_env_or_registry_credentials() {
    let out = Capture::default();
    let writer = out.clone();
    let opts = LogOptions {
        format: LogFormat::Text,
        debug: true,
        directives: None,
    };
    // Both streams into one capture: the secret must reach neither.
    let errors = out.clone();
    logging::try_init_with(
        &opts,
        move || writer.clone(),
        move || errors.clone(),
        Terminals::default(),
    )
    .expect("first subscriber");
    let failed = create_and_pull().await;
    assert_no_secret(&failed);
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    // The launcher's own debug events are there (the filter is open for us)...
    assert!(text.contains("DEBUG"), "no debug line at all:\n{text}");
    assert_no_secret(&text);

    let json = Capture::default();
    let (info, errors) = (json.clone(), json.clone());
    let opts = LogOptions {
        format: LogFormat::Json,
        ..opts
    };
    let scoped = logging::subscriber(
        &opts,
        move || info.clone(),
        move || errors.clone(),
        Terminals::default(),
    );
    let guard = tracing::subscriber::set_default(scoped);
    let failed = create_and_pull().await;
    drop(guard);
    assert_no_secret(&failed);
    let text = String::from_utf8(json.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("\"level\":\"debug\""),
        "no debug line at all:\n{text}"
    );
    assert_no_secret(&text);
}

/// No secret, in the request bodies (Env), the auth header or a helper's output.
fn assert_no_secret(text: &str) {
    for secret in [
        PASSED_SECRET,
        STACK_SECRET,
        REGISTRY_PASSWORD,
        HELPER_SECRET,
        FAILING_HELPER_SECRET,
    ] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
}

/// A run container carrying the secrets created and removed, an image pulled with
/// registry credentials, against a fresh fake-docker.
async fn create_and_pull() -> String {
    let fd = FakeDocker::start(Config {
        local_images: vec!["busybox".into()],
        ..Config::default()
    })
    .await
    .expect("fake-docker");
    let rt = BollardRuntime::connect(Some(&fd.docker_host()))
        .await
        .expect("connect");

    let mut settings = Settings::isolated(PathBuf::from("/data"));
    settings.passed_env = vec![PassedEnv {
        name: "AWS_SECRET_ACCESS_KEY".into(),
        value: PASSED_SECRET.into(),
        applies_to: MountScope::All,
    }];
    settings.masked_values = vec![PASSED_SECRET.into()];
    let run = RunSpec {
        run_ulid: "01HRUNULIDDEBUGLOGGING0001".into(),
        stack_id: "stack".into(),
        run_type: RunType::Tracked,
        image: Some("busybox".into()),
        env: BTreeMap::from([("TF_VAR_password".to_string(), STACK_SECRET.to_string())]),
        vendor: None,
    };
    let binary = CachedBinary {
        version: "1.0.0".into(),
        sha256: "ab".into(),
        path: PathBuf::from("/data/binaries/ab/spacelift-worker"),
    };
    let ids = Ids {
        worker_ulid: "W1".into(),
        pool_ulid: "P1".into(),
        launcher_id: "L1".into(),
    };
    let workspace = std::path::Path::new("/data/workspaces/spacelift-r1");
    let spec = container_spec::build(&settings, &run, "busybox", &binary, workspace, &ids);
    let id = rt.create(&spec).await.expect("create");
    assert!(!id.is_empty());
    // The pull may fail (fake-docker knows no such remote image); its request carries the
    // credentials either way.
    let auth = RegistryAuth {
        username: Some("robot".into()),
        password: Some(REGISTRY_PASSWORD.into()),
        identity_token: None,
        server: Some("registry.example.com".into()),
    };
    let _ = rt
        .pull_image("registry.example.com/team/img:1", "linux/amd64", Some(auth))
        .await;
    let (config_dir, helpers) = helper_config();
    let rt = rt
        .with_docker_config_dir(Some(config_dir.path().to_path_buf()))
        .with_credential_helpers(helpers);
    let _ = rt
        .pull_image("good.example.com/team/img:1", "linux/amd64", None)
        .await;
    let failed = rt
        .pull_image("bad.example.com/team/img:1", "linux/amd64", None)
        .await
        .expect_err("the failing helper fails the pull");
    // What the run would log and report for it.
    let failed = format!("{failed} / {failed:?}");
    assert!(failed.contains("docker-credential-bad"), "{failed}");
    let _ = rt.remove(&id).await;

    fd.shutdown().await;
    failed
}
