//! Conformance of fake-docker with bollard 0.21: the calls the launcher makes, their
//! replies, error statuses and messages, and the test-instrument features (rules,
//! platforms, faults, restart, event log).

mod fake_docker_common;

use std::time::Duration;

use bollard::models::{HostConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, EventsOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, StopContainerOptionsBuilder,
};
use fake_docker::{Behaviour, Config, Match, PullFault, RestartOptions, RouteFault, Rule};
use fake_docker_common::*;
use futures_util::StreamExt;

fn rule_on_label(key: &str, value: &str, behaviour: Behaviour) -> Rule {
    Rule {
        matches: Match {
            labels: [(key.to_string(), value.to_string())].into(),
            ..Match::default()
        },
        behaviour,
    }
}

#[tokio::test]
async fn version_rejection_and_negotiation() {
    let (fd, docker) = fake(Config {
        api_version: "1.41".into(),
        ..Config::default()
    })
    .await;
    // A /v1.53 request is rejected exactly like Debian's dockerd 20.10 does.
    let (status, body) = raw_request(fd.socket_path(), "GET", "/v1.53/version", b"").await;
    assert_eq!(status, 400);
    assert_eq!(
        body.trim(),
        r#"{"message":"client version 1.53 is too new. Maximum supported API version is 1.41"}"#
    );
    // bollard 0.21 builds "/v1.53" + path with Url::join, and joining an absolute path
    // drops the prefix: its requests are unversioned, so even the default client works.
    let version = docker.version().await.expect("version");
    assert_eq!(version.api_version.as_deref(), Some("1.41"));
    let sent: Vec<String> = fd
        .events()
        .into_iter()
        .filter(|e| e.kind == "request")
        .filter_map(|e| e.attributes.get("path").cloned())
        .collect();
    assert_eq!(sent, ["/v1.53/version", "/version"]);
    // Negotiation reads ApiVersion from /version and lowers the client to 1.41.
    let negotiated = docker.negotiate_version().await.expect("negotiate");
    assert_eq!(negotiated.client_version().to_string(), "1.41");
    // An explicit client version 1.41 works too.
    let v141 = bollard::ClientVersion {
        major_version: 1,
        minor_version: 41,
    };
    let docker = connect(&fd.docker_host(), &v141);
    let info = docker.info().await.expect("info");
    assert_eq!(info.architecture.as_deref(), Some("x86_64"));
    assert_eq!(docker.ping().await.expect("ping"), "OK");
}

#[tokio::test]
async fn pull_create_start_wait_logs_inspect_remove() {
    let (fd, docker) = fake(Config::default()).await;
    let statuses = pull(&docker, "busybox", "").await.expect("pull");
    assert_eq!(
        statuses.first().map(String::as_str),
        Some("Pulling from library/busybox")
    );
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("Status: Downloaded newer image for busybox:latest")
    );
    let again = pull(&docker, "docker.io/library/busybox:latest", "")
        .await
        .expect("pull again");
    assert_eq!(
        again.last().map(String::as_str),
        Some("Status: Image is up to date for busybox:latest")
    );
    let image = docker
        .inspect_image("busybox")
        .await
        .expect("inspect image");
    assert_eq!(image.architecture.as_deref(), Some("amd64"));
    assert_eq!(image.os.as_deref(), Some("linux"));
    assert_eq!(
        docker
            .list_images(None::<bollard::query_parameters::ListImagesOptions>)
            .await
            .expect("images")
            .len(),
        1
    );

    fd.add_rule(rule_on_label(
        "job",
        "talk",
        Behaviour {
            stdout: vec!["one".into(), "two".into()],
            stderr: vec!["oops".into()],
            ..Behaviour::default()
        },
    ));
    let id = create(
        &docker,
        Some("talker"),
        with_labels(body("busybox", &["run"]), &[("job", "talk")]),
    )
    .await
    .expect("create");
    assert_eq!(id.len(), 64);
    let before = docker
        .inspect_container("talker", None)
        .await
        .expect("inspect");
    assert_eq!(
        before.state.as_ref().and_then(|s| s.status),
        Some(bollard::models::ContainerStateStatusEnum::CREATED)
    );
    assert_eq!(before.name.as_deref(), Some("/talker"));
    docker.start_container(&id, None).await.expect("start");
    assert_eq!(wait(&docker, &id, "not-running").await.expect("wait"), 0);

    let lines = logs(&docker, &id, false, "all").await;
    assert_eq!(
        lines,
        vec![
            ("stdout", "one\n".to_string()),
            ("stdout", "two\n".to_string()),
            ("stderr", "oops\n".to_string())
        ]
    );
    assert_eq!(
        logs(&docker, &id, false, "1").await,
        vec![("stderr", "oops\n".to_string())]
    );
    let stamped = logs(&docker, &id, true, "all").await;
    let (ts, text) = stamped[0].1.split_once(' ').expect("timestamp prefix");
    assert_eq!(text, "one\n");
    assert!(
        ts.starts_with("2024-01-01T00:00:") && ts.ends_with('Z') && ts.len() == 30,
        "{ts}"
    );

    let after = docker
        .inspect_container(&id[..12], None)
        .await
        .expect("inspect by prefix");
    let state = after.state.expect("state");
    assert_eq!(
        state.status,
        Some(bollard::models::ContainerStateStatusEnum::EXITED)
    );
    assert_eq!(state.exit_code, Some(0));
    assert_eq!(after.config.and_then(|c| c.tty), Some(false));

    docker.remove_container(&id, None).await.expect("remove");
    let (status, message) = server_error(docker.inspect_container(&id, None).await);
    assert_eq!((status, message), (404, format!("No such container: {id}")));
    let (status, message) = server_error(docker.remove_container("nope", None).await);
    assert_eq!((status, message.as_str()), (404, "No such container: nope"));
}

#[tokio::test]
async fn default_behaviour_interprets_simple_commands() {
    let (_fd, docker) = fake(Config {
        local_images: vec!["busybox".into()],
        ..Config::default()
    })
    .await;
    let id = create(
        &docker,
        None,
        body("busybox", &["sh", "-c", "echo out; echo err >&2; exit 3"]),
    )
    .await
    .expect("create");
    docker.start_container(&id, None).await.expect("start");
    assert_eq!(wait(&docker, &id, "not-running").await.expect("wait"), 3);
    assert_eq!(
        logs(&docker, &id, false, "all").await,
        vec![("stdout", "out\n".into()), ("stderr", "err\n".into())]
    );
    let list = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default().all(true).build(),
        ))
        .await
        .expect("list");
    let name = list[0]
        .names
        .as_ref()
        .and_then(|n| n.first())
        .cloned()
        .unwrap_or_default();
    assert!(
        name.starts_with('/') && name.len() > 2,
        "generated name {name}"
    );
    assert_eq!(
        list[0].status.as_deref(),
        Some("Exited (3) Less than a second ago")
    );
}

#[tokio::test]
async fn wait_conditions_and_auto_remove() {
    let (fd, docker) = fake(Config {
        local_images: vec!["busybox".into()],
        ..Config::default()
    })
    .await;
    fd.add_rule(rule_on_label(
        "job",
        "hang",
        Behaviour {
            hang: true,
            ..Behaviour::default()
        },
    ));
    let mut b = with_labels(body("busybox", &["x"]), &[("job", "hang")]);
    b.host_config = Some(HostConfig {
        auto_remove: Some(true),
        ..HostConfig::default()
    });
    let id = create(&docker, None, b).await.expect("create");
    // not-running returns at once for a created container.
    assert_eq!(
        wait(&docker, &id, "not-running")
            .await
            .expect("wait created"),
        0
    );
    // Register "removed" before start; headers come back immediately, the body on removal.
    let removed = wait_registered(fd.socket_path(), &id, "removed").await;
    docker.start_container(&id, None).await.expect("start");
    let (status, _) = raw_request(
        fd.socket_path(),
        "POST",
        &format!("/containers/{id}/start"),
        b"",
    )
    .await;
    assert_eq!(status, 304, "starting a running container is 304");
    docker
        .kill_container(
            &id,
            Some(
                KillContainerOptionsBuilder::default()
                    .signal("SIGKILL")
                    .build(),
            ),
        )
        .await
        .expect("kill");
    assert_eq!(removed.status_code().await, 137);
    let (status, _) = server_error(docker.inspect_container(&id, None).await);
    assert_eq!(status, 404, "AutoRemove removed it");
    let (status, message) = server_error(wait(&docker, "ghost", "next-exit").await);
    assert_eq!(
        (status, message.as_str()),
        (404, "No such container: ghost")
    );
    let (status, _) = server_error(wait(&docker, &id, "bogus").await);
    assert!(status == 400 || status == 404);
}

#[tokio::test]
async fn attach_before_start_streams_output_then_closes() {
    let (fd, docker) = fake(Config {
        local_images: vec!["busybox".into()],
        ..Config::default()
    })
    .await;
    fd.add_rule(rule_on_label(
        "job",
        "slow",
        Behaviour {
            lines: vec![
                fake_docker::Line {
                    stream: fake_docker::Stream::Stdout,
                    text: "first".into(),
                    delay_ms: 5,
                },
                fake_docker::Line {
                    stream: fake_docker::Stream::Stderr,
                    text: "second".into(),
                    delay_ms: 5,
                },
            ],
            exit_code: 0,
            ..Behaviour::default()
        },
    ));
    let id = create(
        &docker,
        None,
        with_labels(body("busybox", &["x"]), &[("job", "slow")]),
    )
    .await
    .expect("create");
    let attach = docker
        .attach_container(
            &id,
            Some(
                AttachContainerOptionsBuilder::default()
                    .stream(true)
                    .stdout(true)
                    .stderr(true)
                    .build(),
            ),
        )
        .await
        .expect("attach");
    docker.start_container(&id, None).await.expect("start");
    let frames: Vec<_> = attach
        .output
        .map(|r| frame(r.expect("frame")))
        .collect()
        .await;
    assert_eq!(
        frames,
        vec![
            ("stdout", "first\n".to_string()),
            ("stderr", "second\n".to_string())
        ]
    );
    let (status, message) = server_error(
        docker
            .attach_container(
                &id,
                Some(
                    AttachContainerOptionsBuilder::default()
                        .stream(true)
                        .stdout(true)
                        .build(),
                ),
            )
            .await
            .map(|_| ()),
    );
    assert_eq!(
        (status, message.as_str()),
        (
            409,
            "You cannot attach to a stopped container, start it first"
        )
    );
}

#[tokio::test]
async fn follow_logs_until_exit() {
    let (fd, docker) = fake(Config {
        local_images: vec!["busybox".into()],
        ..Config::default()
    })
    .await;
    fd.add_rule(rule_on_label(
        "job",
        "hang",
        Behaviour {
            stdout: vec!["ready".into()],
            hang: true,
            ..Behaviour::default()
        },
    ));
    let id = create(
        &docker,
        None,
        with_labels(body("busybox", &["x"]), &[("job", "hang")]),
    )
    .await
    .expect("create");
    docker.start_container(&id, None).await.expect("start");
    let mut follow = docker.logs(
        &id,
        Some(
            LogsOptionsBuilder::default()
                .follow(true)
                .stdout(true)
                .build(),
        ),
    );
    assert_eq!(
        frame(follow.next().await.expect("a line").expect("ok")),
        ("stdout", "ready\n".to_string())
    );
    fd.kill_container(&id, 9).expect("admin kill");
    assert!(
        follow.next().await.is_none(),
        "follow ends when the container exits"
    );
}

#[tokio::test]
async fn kill_stop_and_signals() {
    let (fd, docker) = fake(Config {
        local_images: vec!["busybox".into()],
        ..Config::default()
    })
    .await;
    fd.add_rule(rule_on_label(
        "job",
        "stubborn",
        Behaviour {
            hang: true,
            ignore_sigterm: true,
            ..Behaviour::default()
        },
    ));
    fd.add_rule(rule_on_label(
        "job",
        "polite",
        Behaviour {
            hang: true,
            ..Behaviour::default()
        },
    ));

    let polite = create(
        &docker,
        None,
        with_labels(body("busybox", &["x"]), &[("job", "polite")]),
    )
    .await
    .expect("create");
    docker.start_container(&polite, None).await.expect("start");
    docker
        .stop_container(
            &polite,
            Some(StopContainerOptionsBuilder::default().t(30).build()),
        )
        .await
        .expect("stop");
    assert_eq!(
        docker
            .inspect_container(&polite, None)
            .await
            .expect("inspect")
            .state
            .and_then(|s| s.exit_code),
        Some(143)
    );
    // bollard treats 304 as success; check the status itself on the wire.
    let (status, _) = raw_request(
        fd.socket_path(),
        "POST",
        &format!("/containers/{polite}/stop"),
        b"",
    )
    .await;
    assert_eq!(status, 304);

    let stubborn = create(
        &docker,
        None,
        with_labels(body("busybox", &["x"]), &[("job", "stubborn")]),
    )
    .await
    .expect("create");
    docker
        .start_container(&stubborn, None)
        .await
        .expect("start");
    docker
        .stop_container(
            &stubborn,
            Some(StopContainerOptionsBuilder::default().t(0).build()),
        )
        .await
        .expect("stop");
    assert_eq!(
        docker
            .inspect_container(&stubborn, None)
            .await
            .expect("inspect")
            .state
            .and_then(|s| s.exit_code),
        Some(137)
    );

    let (status, message) = server_error(docker.kill_container(&stubborn, None).await);
    assert_eq!(
        (status, message),
        (
            409,
            format!("cannot kill container: {stubborn}: container {stubborn} is not running")
        )
    );
    let (status, message) = server_error(docker.kill_container("nope", None).await);
    assert_eq!(
        (status, message.as_str()),
        (404, "cannot kill container: nope: No such container: nope")
    );

    let oom = create(
        &docker,
        None,
        with_labels(body("busybox", &["x"]), &[("job", "polite")]),
    )
    .await
    .expect("create");
    docker.start_container(&oom, None).await.expect("start");
    fd.oom_kill(&oom).expect("oom");
    let state = docker
        .inspect_container(&oom, None)
        .await
        .expect("inspect")
        .state
        .expect("state");
    assert_eq!((state.exit_code, state.oom_killed), (Some(137), Some(true)));
}

#[tokio::test]
async fn remove_running_and_names() {
    let (fd, docker) = fake(Config {
        local_images: vec!["busybox".into()],
        ..Config::default()
    })
    .await;
    fd.add_rule(rule_on_label(
        "job",
        "hang",
        Behaviour {
            hang: true,
            ..Behaviour::default()
        },
    ));
    let id = create(
        &docker,
        Some("web"),
        with_labels(body("busybox", &["x"]), &[("job", "hang")]),
    )
    .await
    .expect("create");
    let (status, message) =
        server_error(create(&docker, Some("web"), body("busybox", &["x"])).await);
    assert_eq!(status, 409);
    assert_eq!(
        message,
        format!("Conflict. The container name \"/web\" is already in use by container \"{id}\". You have to remove (or rename) that container to be able to reuse that name.")
    );
    let (status, message) =
        server_error(create(&docker, Some("b@d"), body("busybox", &["x"])).await);
    assert_eq!(
        (status, message.as_str()),
        (
            400,
            "Invalid container name (b@d), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )
    );
    let (status, message) = server_error(create(&docker, None, body("nothere", &["x"])).await);
    assert_eq!(
        (status, message.as_str()),
        (404, "No such image: nothere:latest")
    );

    docker
        .start_container("web", None)
        .await
        .expect("start by name");
    let (status, message) = server_error(docker.remove_container("web", None).await);
    assert_eq!(status, 409);
    assert_eq!(message, "cannot remove container \"/web\": container is running: stop the container before removing or force remove");
    force_remove(&docker, "web").await.expect("force remove");
    assert!(fd.containers().is_empty());
}

#[tokio::test]
async fn list_with_label_filters() {
    let (_fd, docker) = fake(Config {
        local_images: vec!["busybox".into()],
        ..Config::default()
    })
    .await;
    let a = create(
        &docker,
        Some("ca"),
        with_labels(body("busybox", &["true"]), &[("run", "1"), ("pool", "p")]),
    )
    .await
    .expect("a");
    let b = create(
        &docker,
        Some("cb"),
        with_labels(body("busybox", &["true"]), &[("run", "2"), ("pool", "p")]),
    )
    .await
    .expect("b");
    let list = |filters: Vec<&str>| {
        let docker = docker.clone();
        let filters: Vec<String> = filters.into_iter().map(str::to_string).collect();
        async move {
            let opts = ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&[("label".to_string(), filters)].into_iter().collect())
                .build();
            docker
                .list_containers(Some(opts))
                .await
                .expect("list")
                .into_iter()
                .filter_map(|c| c.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(vec!["pool=p"]).await,
        vec![b.clone(), a.clone()],
        "newest first"
    );
    assert_eq!(list(vec!["pool"]).await.len(), 2);
    assert_eq!(
        list(vec!["pool=p", "run=1"]).await,
        vec![a.clone()],
        "filters are ANDed"
    );
    assert!(list(vec!["run=3"]).await.is_empty());
    let running = docker.list_containers(None).await.expect("running only");
    assert!(
        running.is_empty(),
        "without all=true only running containers are listed"
    );
}

#[tokio::test]
async fn events_stream_a_run() {
    let (_fd, docker) = fake(Config {
        local_images: vec!["busybox".into()],
        ..Config::default()
    })
    .await;
    let mut events = docker.events(Some(
        EventsOptionsBuilder::default()
            .since("0")
            .filters(
                &[("type".to_string(), vec!["container".to_string()])]
                    .into_iter()
                    .collect(),
            )
            .build(),
    ));
    let id = create(&docker, Some("ev"), body("busybox", &["echo", "hi"]))
        .await
        .expect("create");
    docker.start_container(&id, None).await.expect("start");
    assert_eq!(wait(&docker, &id, "not-running").await.expect("wait"), 0);
    docker.remove_container(&id, None).await.expect("rm");
    let mut actions = Vec::new();
    while actions.len() < 4 {
        let e = events.next().await.expect("event").expect("ok");
        assert_eq!(
            e.actor.as_ref().and_then(|a| a.id.clone()),
            Some(id.clone())
        );
        actions.push(e.action.unwrap_or_default());
    }
    assert_eq!(actions, ["create", "start", "die", "destroy"]);
}

#[tokio::test]
async fn networks() {
    let (_fd, docker) = fake(Config::default()).await;
    let names: Vec<String> = docker
        .list_networks(None)
        .await
        .expect("list")
        .into_iter()
        .filter_map(|n| n.name)
        .collect();
    assert_eq!(names, ["bridge", "host", "none"]);
    let bridge = docker
        .inspect_network("bridge", None)
        .await
        .expect("bridge");
    let gateway = bridge
        .ipam
        .and_then(|i| i.config)
        .and_then(|c| c.first().and_then(|c| c.gateway.clone()));
    assert_eq!(
        gateway, None,
        "no gateway: testcontainers then uses localhost"
    );
    let req = NetworkCreateRequest {
        name: "jobs".into(),
        ..Default::default()
    };
    let created = docker.create_network(req.clone()).await.expect("create");
    assert_eq!(created.id.len(), 64);
    let (status, message) = server_error(docker.create_network(req).await);
    assert_eq!(
        (status, message.as_str()),
        (409, "network with name jobs already exists")
    );
    assert_eq!(
        docker
            .inspect_network("jobs", None)
            .await
            .expect("inspect")
            .id,
        Some(created.id.clone())
    );
    docker.remove_network("jobs").await.expect("remove");
    let (status, message) = server_error(docker.inspect_network("jobs", None).await);
    assert_eq!((status, message.as_str()), (404, "network jobs not found"));
}

#[tokio::test]
async fn foreign_image_platform_gives_exec_format_error() {
    let (fd, docker) = fake(Config::default()).await;
    fd.set_image_platforms("busybox-arm64", &["linux/arm64"])
        .expect("platforms");
    fd.set_image_platforms("multi", &["linux/amd64", "linux/arm64"])
        .expect("platforms");
    pull(&docker, "busybox-arm64", "")
        .await
        .expect("a single-platform image pulls whatever it is");
    let img = docker
        .inspect_image("busybox-arm64")
        .await
        .expect("inspect");
    assert_eq!(
        (img.architecture.as_deref(), img.variant.as_deref()),
        (Some("arm64"), Some("v8"))
    );
    pull(&docker, "multi", "linux/arm64")
        .await
        .expect("pull arm64 of a multi-arch image");
    assert_eq!(
        docker
            .inspect_image("multi")
            .await
            .expect("inspect")
            .architecture
            .as_deref(),
        Some("arm64")
    );

    let created = docker
        .create_container(None, body("busybox-arm64", &["echo", "hi"]))
        .await
        .expect("create");
    assert_eq!(
        created.warnings,
        ["The requested image's platform (linux/arm64/v8) does not match the detected host platform (linux/amd64) and no specific platform was requested"]
    );
    docker
        .start_container(&created.id, None)
        .await
        .expect("start is 204 even so");
    assert_eq!(
        wait(&docker, &created.id, "not-running")
            .await
            .expect("wait"),
        255
    );
    assert_eq!(
        logs(&docker, &created.id, false, "all").await,
        vec![("stderr", "exec /bin/echo: exec format error\n".into())]
    );
    let state = docker
        .inspect_container(&created.id, None)
        .await
        .expect("inspect")
        .state
        .expect("state");
    assert_eq!(
        (state.exit_code, state.error.as_deref()),
        (Some(255), Some(""))
    );
}

fn elf_header(machine: u16) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // 64-bit
    h[5] = 1; // little endian
    h[18..20].copy_from_slice(&machine.to_le_bytes());
    h
}

#[tokio::test]
async fn bind_mounted_entrypoint_elf_decides_the_architecture() {
    let (_fd, docker) = fake(Config {
        local_images: vec!["runner".into()],
        ..Config::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    for (file, machine, expected) in [("worker-arm64", 0xB7u16, 255i64), ("worker-amd64", 0x3E, 0)]
    {
        let path = dir.path().join(file);
        std::fs::write(&path, elf_header(machine)).expect("write");
        let mut b = body("runner", &[]);
        b.entrypoint = Some(vec!["/usr/bin/spacelift-worker".into()]);
        b.host_config = Some(HostConfig {
            binds: Some(vec![format!(
                "{}:/usr/bin/spacelift-worker:ro",
                path.display()
            )]),
            ..HostConfig::default()
        });
        let id = create(&docker, None, b).await.expect("create");
        docker.start_container(&id, None).await.expect("start");
        assert_eq!(
            wait(&docker, &id, "not-running").await.expect("wait"),
            expected,
            "{file}"
        );
        if expected == 255 {
            assert_eq!(
                logs(&docker, &id, false, "all").await,
                vec![(
                    "stderr",
                    "exec /usr/bin/spacelift-worker: exec format error\n".into()
                )]
            );
        }
    }
}

#[tokio::test]
async fn pull_errors() {
    let (fd, docker) = fake(Config::default()).await;
    fd.set_image_missing("ghost").expect("missing");
    let (status, message) = server_error(pull(&docker, "ghost", "").await);
    assert_eq!(status, 404);
    assert!(message.starts_with(
        "pull access denied for ghost, repository does not exist or may require 'docker login'"
    ));

    fd.set_image_platforms("amd-only", &["linux/amd64", "linux/386"])
        .expect("platforms");
    match pull(&docker, "amd-only", "linux/arm64").await {
        Err(bollard::errors::Error::DockerStreamError { error }) => {
            assert_eq!(
                error,
                "no matching manifest for linux/arm64/v8 in the manifest list entries"
            )
        }
        other => panic!("expected an in-stream error, got {other:?}"),
    }

    fd.pull_fault(PullFault {
        image: Some("flaky".into()),
        error: Some("unexpected EOF".into()),
        count: Some(1),
        ..PullFault::default()
    });
    match pull(&docker, "flaky", "").await {
        Err(bollard::errors::Error::DockerStreamError { error }) => {
            assert_eq!(error, "unexpected EOF")
        }
        other => panic!("expected an in-stream error, got {other:?}"),
    }
    let (status, _) = server_error(docker.inspect_image("flaky").await);
    assert_eq!(status, 404, "a failed pull leaves no image");
    pull(&docker, "flaky", "")
        .await
        .expect("the fault was for one pull only");
    let events = fd.events();
    assert!(events
        .iter()
        .any(|e| e.kind == "fault" && e.action == "pull"));
    assert!(events.iter().any(|e| e.kind == "image"
        && e.action == "pull"
        && e.attributes.get("name").map(String::as_str) == Some("flaky:latest")));
}

#[tokio::test]
async fn env_var_behaviour_convention() {
    let (_fd, docker) = fake(Config {
        local_images: vec!["busybox".into()],
        ..Config::default()
    })
    .await;
    let mut b = body("busybox", &["anything"]);
    b.env = Some(vec![
        r#"FAKE_DOCKER_BEHAVIOUR={"stdout":["from env"],"exit_code":42}"#.into(),
    ]);
    let id = create(&docker, None, b).await.expect("create");
    docker.start_container(&id, None).await.expect("start");
    assert_eq!(wait(&docker, &id, "not-running").await.expect("wait"), 42);
    assert_eq!(
        logs(&docker, &id, false, "all").await,
        vec![("stdout", "from env\n".into())]
    );
}

#[tokio::test]
async fn route_faults_and_latency() {
    let (fd, docker) = fake(Config {
        local_images: vec!["busybox".into()],
        ..Config::default()
    })
    .await;
    fd.fail_next(RouteFault {
        route: "containers.create".into(),
        count: 2,
        status: 503,
        message: "overloaded".into(),
    })
    .expect("fault");
    for _ in 0..2 {
        let (status, message) =
            server_error(create(&docker, None, body("busybox", &["true"])).await);
        assert_eq!((status, message.as_str()), (503, "overloaded"));
    }
    create(&docker, None, body("busybox", &["true"]))
        .await
        .expect("third call succeeds");
    assert!(fd
        .fail_next(RouteFault {
            route: "nope".into(),
            count: 1,
            status: 500,
            message: String::new()
        })
        .is_err());
    fd.set_latency("info", Duration::from_millis(1));
    docker.info().await.expect("slow but fine");
    let faults = fd
        .events()
        .into_iter()
        .filter(|e| e.kind == "fault")
        .count();
    assert_eq!(faults, 2);
}

#[tokio::test]
async fn restart_drops_connections_and_optionally_containers() {
    let (fd, docker) = fake(Config {
        local_images: vec!["busybox".into()],
        ..Config::default()
    })
    .await;
    fd.add_rule(rule_on_label(
        "job",
        "hang",
        Behaviour {
            stdout: vec!["up".into()],
            hang: true,
            ..Behaviour::default()
        },
    ));
    let id = create(
        &docker,
        None,
        with_labels(body("busybox", &["x"]), &[("job", "hang")]),
    )
    .await
    .expect("create");
    docker.start_container(&id, None).await.expect("start");
    let mut follow = docker.logs(
        &id,
        Some(
            LogsOptionsBuilder::default()
                .follow(true)
                .stdout(true)
                .build(),
        ),
    );
    assert!(follow.next().await.is_some());
    fd.restart(RestartOptions {
        keep_containers: true,
        downtime_ms: 0,
    });
    loop {
        // The stream ends (EOF or an error) because the connection was dropped.
        match follow.next().await {
            None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        }
    }
    let state = docker
        .inspect_container(&id, None)
        .await
        .expect("kept")
        .state
        .expect("state");
    assert_eq!(state.running, Some(true), "kept containers keep running");
    fd.restart(RestartOptions {
        keep_containers: false,
        downtime_ms: 0,
    });
    let (status, _) = server_error(docker.inspect_container(&id, None).await);
    assert_eq!(status, 404, "containers lost");
    assert_eq!(
        fd.events()
            .iter()
            .filter(|e| e.kind == "daemon" && e.action == "restart")
            .count(),
        2
    );
}

#[tokio::test]
async fn bad_input_gets_dockerd_statuses() {
    let (fd, docker) = fake(Config {
        max_body_bytes: 1024,
        ..Config::default()
    })
    .await;
    let sock = fd.socket_path();
    let (status, body) = raw_request(sock, "POST", "/v1.53/containers/create", b"{bad").await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid JSON"), "{body}");
    let (status, body) = raw_request(
        sock,
        "POST",
        "/containers/create",
        b"{\"Image\":\"x\",\"Cmd\":5}",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = raw_request(sock, "GET", "/v1.53/volumes/x/json", b"").await;
    assert_eq!(
        (status, body.trim()),
        (404, r#"{"message":"page not found"}"#)
    );
    let big = vec![b' '; 4096];
    let (status, body) = raw_request(sock, "POST", "/containers/create", &big).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = raw_request(sock, "GET", "/containers/json?filters=notjson", b"").await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = raw_request(sock, "HEAD", "/_ping", b"").await;
    assert_eq!(status, 200);
    let (status, body) = raw_request(sock, "GET", "/v1.12/info", b"").await;
    assert_eq!(status, 400);
    assert!(body.contains("client version 1.12 is too old"), "{body}");
    let (status, body) = raw_request(sock, "GET", "/containers/x/logs?stdout=1", b"").await;
    assert_eq!(
        (status, body.trim()),
        (404, r#"{"message":"No such container: x"}"#)
    );
    let _ = docker;
}

#[tokio::test]
async fn admin_over_http() {
    let (fd, docker) = fake(Config {
        local_images: vec!["busybox".into()],
        ..Config::default()
    })
    .await;
    let sock = fd.socket_path();
    let rule = br#"{"match":{"labels":{"job":"http"}},"behaviour":{"stdout":["via admin"],"exit_code":5}}"#;
    let (status, reply) = raw_request(sock, "POST", "/_fake/rules", rule).await;
    assert_eq!(status, 200, "{reply}");
    let (status, _) = raw_request(
        sock,
        "PUT",
        "/_fake/registry/armonly",
        br#"{"platforms":[{"os":"linux","architecture":"arm64"}]}"#,
    )
    .await;
    assert_eq!(status, 200);
    let (status, reply) =
        raw_request(sock, "POST", "/_fake/faults/route", br#"{"route":"bogus"}"#).await;
    assert_eq!(status, 400, "{reply}");
    let id = create(
        &docker,
        None,
        with_labels(body("busybox", &["x"]), &[("job", "http")]),
    )
    .await
    .expect("create");
    docker.start_container(&id, None).await.expect("start");
    assert_eq!(wait(&docker, &id, "not-running").await.expect("wait"), 5);
    pull(&docker, "armonly", "").await.expect("pull");
    assert_eq!(
        docker
            .inspect_image("armonly")
            .await
            .expect("img")
            .architecture
            .as_deref(),
        Some("arm64")
    );
    let (status, reply) = raw_request(sock, "GET", "/_fake/events", b"").await;
    assert_eq!(status, 200);
    let events: Vec<serde_json::Value> = serde_json::from_str(&reply).expect("events JSON");
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "ordered, gapless"
    );
    assert!(events.iter().any(|e| e["kind"] == "container"
        && e["action"] == "die"
        && e["attributes"]["exitCode"] == "5"));
    let (status, reply) = raw_request(sock, "GET", "/_fake/containers", b"").await;
    assert_eq!(status, 200);
    assert!(reply.contains(&id));
}

#[tokio::test]
async fn same_seed_same_ids() {
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (_fd, docker) = fake(Config {
            seed: 7,
            local_images: vec!["busybox".into()],
            ..Config::default()
        })
        .await;
        let id = create(&docker, None, body("busybox", &["true"]))
            .await
            .expect("create");
        let image = docker.inspect_image("busybox").await.expect("image").id;
        let name = docker
            .inspect_container(&id, None)
            .await
            .expect("inspect")
            .name;
        ids.push((id, image, name));
    }
    assert_eq!(ids[0], ids[1]);
}
