//! testcontainers-rs 0.28 (GenericImage) against fake-docker.
//!
//! testcontainers finds the daemon through `DOCKER_HOST`, so this test sets it. That is
//! process-global state, hence this dedicated test binary with exactly one test.

use fake_docker::{Config, FakeDocker};
use testcontainers::core::WaitFor;
use testcontainers::runners::AsyncRunner;
use testcontainers::{GenericImage, ImageExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_image_starts_and_waits_for_a_log_line() {
    let fd = FakeDocker::start(Config::default())
        .await
        .expect("start fake-docker");
    // The only test in this binary: no other thread reads or writes the environment.
    std::env::set_var("DOCKER_HOST", fd.docker_host());

    let container = GenericImage::new("busybox", "1.36")
        .with_wait_for(WaitFor::message_on_stdout("ready"))
        .with_cmd(["sh", "-c", "echo booting; echo ready; sleep 3600"])
        .start()
        .await
        .expect("testcontainers start");
    let id = container.id().to_string();

    // It pulled on the create 404, then created with its label, then started.
    let running = fd.containers();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].id, id);
    assert_eq!(running[0].status, "running");
    assert_eq!(running[0].image, "busybox:1.36");
    assert_eq!(
        running[0]
            .labels
            .get("org.testcontainers.managed-by")
            .map(String::as_str),
        Some("testcontainers")
    );
    let stdout = container.stdout_to_vec().await.expect("logs");
    assert_eq!(String::from_utf8_lossy(&stdout), "booting\nready\n");

    container.rm().await.expect("remove");
    fd.wait_for_event(|e| e.kind == "container" && e.action == "destroy" && e.id == id)
        .await;
    assert!(fd.containers().is_empty());
}
