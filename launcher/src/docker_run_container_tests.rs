//! The run container as [`crate::container_spec::build`] makes it, on the real dockerd
//! (`TEST_DOCKER_HOST`): the worker, a 0555 file in a 0700 cache folder as the binary
//! cache leaves it, runs as the run user under docker-init, writes its workspace, and sees
//! the operator's switches; the workspace goes after the container.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use futures_util::StreamExt;
use protocol::api::{RunSpec, RunType};

use crate::container_spec::{self, Ids};
use crate::docker::BollardRuntime;
use crate::ports::{CachedBinary, ContainerRuntime};
use crate::settings::{RunUser, Settings};
use crate::workspace::{DirWorkspaces, Workspaces};

const WORKER: &str = r#"#!/bin/sh
echo "uid $(id -u):$(id -g)"
echo "pid1 $(tr '\0' ' ' < /proc/1/cmdline)"
echo "me $$"
echo "debug=$SPACELIFT_DEBUG sensitive=$SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED"
echo "pwd $(pwd)"
echo hello > /mnt/workspace/source/file && echo "wrote source"
"#;

#[tokio::test]
async fn real_dockerd_runs_the_worker_as_the_run_user_under_init() {
    let host = std::env::var("TEST_DOCKER_HOST").ok();
    use protocol::test_support::{require_component, START_DOCKERD};
    if !require_component(
        host.is_some(),
        "a real dockerd (TEST_DOCKER_HOST)",
        START_DOCKERD,
    ) {
        return;
    }
    let rt = BollardRuntime::connect(host.as_deref()).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let cache = data.path().join("binaries/ab");
    std::fs::create_dir_all(&cache).unwrap();
    let worker = cache.join("spacelift-worker");
    std::fs::write(&worker, WORKER).unwrap();
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();

    let mut settings = Settings::isolated(data.path().to_path_buf());
    settings.debug = true;
    settings.sensitive_output_upload = false;
    // A non-root test process can only hand workspaces to itself.
    let me = std::fs::metadata(data.path()).unwrap().uid();
    if me != 0 {
        settings.run_user = RunUser { uid: me, gid: me };
    }
    use std::os::unix::fs::MetadataExt;
    let workspaces =
        DirWorkspaces::open(data.path().join("workspaces"), settings.run_user).unwrap();
    let run_ulid = format!("01REALWS{}", std::process::id());
    let workspace = workspaces.create(&run_ulid).unwrap();
    let run = RunSpec {
        run_ulid: run_ulid.clone(),
        stack_id: "stack".into(),
        run_type: RunType::Tracked,
        image: None,
        env: Default::default(),
        vendor: None,
    };
    let binary = CachedBinary {
        version: "t".into(),
        sha256: "ab".into(),
        path: PathBuf::from(&worker),
    };
    let ids = Ids {
        worker_ulid: "W-REAL".into(),
        pool_ulid: "P".into(),
        launcher_id: "L".into(),
    };
    let spec = container_spec::build(&settings, &run, "busybox:latest", &binary, &workspace, &ids);
    let id = rt.create(&spec).await.unwrap();
    let result = async {
        rt.start(&id).await?;
        let status = rt.wait(&id).await?;
        let text: Vec<String> = rt
            .logs(&id)
            .await?
            .map(|l| l.map(|l| l.text))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        Ok::<_, crate::ports::RuntimeError>((status, text))
    }
    .await;
    rt.remove(&id).await.unwrap();
    let (status, text) = result.unwrap();
    assert_eq!(status.code, 0, "{text:?}");
    let user = settings.run_user;
    assert!(
        text.contains(&format!("uid {}:{}", user.uid, user.gid)),
        "{text:?}"
    );
    // docker-init is PID 1 and the worker its child.
    assert!(
        text.iter().any(|l| l.starts_with("pid1 ")
            && l.contains("docker-init")
            && l.contains(container_spec::WORKER_BINARY_PATH)),
        "{text:?}"
    );
    assert!(!text.contains(&"me 1".to_string()), "{text:?}");
    assert!(
        text.contains(&"debug=true sensitive=false".to_string()),
        "{text:?}"
    );
    assert!(text.contains(&"pwd /mnt/workspace".to_string()), "{text:?}");
    assert!(text.contains(&"wrote source".to_string()), "{text:?}");
    let written = workspace.join("source/file");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "hello\n");
    assert_eq!(std::fs::metadata(&written).unwrap().uid(), user.uid);
    workspaces.remove(&run_ulid).unwrap();
    assert!(!workspace.exists());
}
