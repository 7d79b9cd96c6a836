//! End to end: a launcher watching a fake GCP metadata server on loopback, the fake
//! backend and fake-docker. A preemption notice reaches the backend in a heartbeat before
//! the idle launcher says goodbye and exits 0.

#[path = "../fake-backend/tests/common/mod.rs"]
mod common;

use common::*;
use fake_backend::kinds;
use launcher::config::MapEnv;
use scenarios::launcher_node::{LauncherNode, NodeExit};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const PREEMPTED: &str = "/computeMetadata/v1/instance/preempted";

async fn preempted(server: &MockServer, answer: &str) {
    server.reset().await;
    Mock::given(method("GET"))
        .and(path(PREEMPTED))
        .and(header("Metadata-Flavor", "Google"))
        .respond_with(ResponseTemplate::new(200).set_body_string(answer))
        .mount(server)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_preemption_reaches_the_backend_and_the_idle_launcher_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(&dir.path().join("backend")).await;
    let (token, key) = b.create_pool_generated().expect("pool");
    let docker = fake_docker::FakeDocker::start(fake_docker::Config::default())
        .await
        .expect("fake-docker");
    let metadata = MockServer::start().await;
    preempted(&metadata, "FALSE").await;

    let data_dir = dir.path().join("launcher");
    std::fs::create_dir_all(&data_dir).unwrap();
    let mut env = MapEnv::default();
    env.set("SPACELIFT_TOKEN", token)
        .set("SPACELIFT_POOL_PRIVATE_KEY", key)
        .set("DOCKER_HOST", docker.docker_host())
        .set("SPACELIFT_WORKER_NETWORK", "none")
        .set(
            "SPACELIFT_LAUNCHER_DATA_DIR",
            data_dir.display().to_string(),
        )
        .set("SPACELIFT_LAUNCHER_SEED", "7")
        .set("SPACELIFT_LAUNCHER_INTERRUPTION_WATCH", "gcp")
        .set("SPACELIFT_LAUNCHER_INTERRUPTION_POLL_INTERVAL", "100ms")
        .set(
            "SPACELIFT_LAUNCHER_INTERRUPTION_METADATA_URL",
            metadata.uri(),
        );
    if let Some(u) = launcher::settings::RunUser::unprivileged_self() {
        env.set("SPACELIFT_LAUNCHER_RUN_USER", u.to_string());
    }
    let config = launcher::config::load(&env)
        .and_then(|c| c.prepare())
        .expect("config");
    let mut node = LauncherNode::start("l1", config).expect("launcher");

    let online = within(
        "the worker online",
        b.wait_for_since(0, |e| e.kind == kinds::WORKER_ONLINE),
    )
    .await;
    let worker = online.worker.expect("a worker");
    assert!(node.exited().is_none(), "FALSE is no notice");

    preempted(&metadata, "TRUE").await;
    assert_eq!(
        within("the launcher's exit", node.wait()).await,
        NodeExit::Exited {
            code: 0,
            error: None
        }
    );

    // The broker acknowledges worker.gone before the backend has applied it.
    let gone = within(
        "worker.gone",
        b.wait_for_since(0, |e| e.kind == kinds::WORKER_GONE),
    )
    .await;
    assert_eq!(gone.data["crashed"], false);
    let view = b.worker(&worker).expect("worker view");
    let notice = view.interruption.expect("the notice recorded");
    assert_eq!(
        (notice.cloud.as_str(), notice.action.as_str()),
        ("gcp", "preempt")
    );
    let events = b.events_since(0);
    let at = |kind: &str| {
        events
            .iter()
            .position(|e| e.kind == kind && e.worker.as_deref() == Some(worker.as_str()))
            .unwrap_or_else(|| panic!("no {kind} event"))
    };
    assert!(at(kinds::WORKER_INTERRUPTION) < at(kinds::WORKER_GONE));
}
