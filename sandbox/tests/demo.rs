//! Runs the whole sandbox demo non-interactively (fake backend + fake-docker in the
//! sandbox process, the real launcher binary as its subprocess) and checks the summary.

use std::process::{Command, Stdio};

use serde_json::Value;

#[test]
fn the_demo_runs_end_as_expected() {
    let dir = tempfile::Builder::new()
        .prefix("sandbox-demo")
        .tempdir()
        .expect("temp dir");
    let summary_path = dir.path().join("summary.json");
    let output = Command::new(env!("CARGO_BIN_EXE_sandbox"))
        .arg("--no-progress")
        .arg("--fake-docker")
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--summary-json")
        .arg(&summary_path)
        .env_remove("DOCKER_HOST")
        .stdin(Stdio::null())
        .output()
        .expect("running the sandbox");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let launcher_log = std::fs::read_to_string(dir.path().join("launcher.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "sandbox failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- launcher.log\n{launcher_log}",
        output.status
    );
    assert!(stdout.contains("Summary"), "no summary table:\n{stdout}");
    assert!(
        stdout.contains("launcher exited: exit status: 0"),
        "the launcher did not stop cleanly:\n{stdout}"
    );

    let summary: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(&summary_path).expect("summary JSON written"),
    )
    .expect("summary JSON parses");
    let run = |name: &str| -> &Value {
        summary
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no run {name} in {summary:#?}"))
    };
    let names: Vec<&str> = summary.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(
        names,
        ["hello", "lines", "fails", "after-bump", "arm64-image"],
        "{summary:#?}"
    );

    for name in ["hello", "lines"] {
        let r = run(name);
        assert_eq!(r["state"], "finished", "{r:#}");
        assert_eq!(r["exit_code"], 0, "{r:#}");
        assert_eq!(r["worker_version"], "v1", "{r:#}");
    }
    let logs = |name: &str| -> String {
        run(name)["log_lines"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    };
    assert!(
        logs("hello").contains("Hello from the sandbox!"),
        "{}",
        logs("hello")
    );
    assert!(logs("lines").contains("step 4/4 done"), "{}", logs("lines"));

    let fails = run("fails");
    assert_eq!(fails["state"], "failed", "{fails:#}");
    assert_eq!(fails["exit_code"], 3, "{fails:#}");
    assert_eq!(fails["reason"], "nonzero_exit", "{fails:#}");
    assert_eq!(fails["worker_version"], "v1", "{fails:#}");

    let bumped = run("after-bump");
    assert_eq!(bumped["state"], "finished", "{bumped:#}");
    assert_eq!(bumped["worker_version"], "v2", "{bumped:#}");

    let arm = run("arm64-image");
    assert_eq!(arm["state"], "failed", "{arm:#}");
    assert_eq!(arm["reason"], "architecture_mismatch", "{arm:#}");

    assert!(
        summary.iter().all(|r| r["as_expected"] == true),
        "{summary:#?}"
    );
}

/// `--keep` prints how to reach the kept world with the CLIs, the printed `docker` command
/// works against it, and Ctrl-C (SIGINT) then stops the launcher and everything else.
#[test]
fn keep_prints_how_to_use_it_and_ctrl_c_stops_everything() {
    use std::io::{BufRead, BufReader};
    use std::sync::mpsc;
    use std::time::Duration;

    let dir = tempfile::Builder::new()
        .prefix("sandbox-keep")
        .tempdir()
        .expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandbox"))
        .args(["--no-progress", "--fake-docker", "--keep", "--data-dir"])
        .arg(dir.path())
        .env_remove("DOCKER_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the sandbox");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    // A deadline, not a pause: the demo normally ends within seconds.
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(240)) {
            Ok(line) => {
                let done = line.contains("Press Ctrl-C here to stop everything");
                seen.push(line);
                if done {
                    break;
                }
            }
            Err(e) => {
                let _ = child.kill();
                panic!("no keep instructions ({e}):\n{}", seen.join("\n"));
            }
        }
    }
    let text = seen.join("\n");
    assert!(text.contains("Every run ended as expected."), "{text}");
    for needle in [
        "export FAKE_BACKEND_DATA_DIR=",
        "export DOCKER_HOST=unix://",
        "run schedule --pool ",
        "version publish --arch ",
        "docker ps -a",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }

    // The printed DOCKER_HOST serves the docker CLI, when there is one.
    let docker_host = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("export DOCKER_HOST="))
        .expect("DOCKER_HOST line")
        .trim()
        .to_string();
    match Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .env("DOCKER_HOST", &docker_host)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "docker ps -a against {docker_host}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            use protocol::test_support::{require_component, INSTALL_DEPS};
            require_component(false, &format!("the docker CLI ({e})"), INSTALL_DEPS);
        }
    }

    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -INT {pid}");
    let out = child.wait_with_output().expect("waiting for the sandbox");
    reader.join().expect("stdout reader");
    let rest: Vec<String> = rx.try_iter().collect();
    let tail = rest.join("\n");
    assert!(
        out.status.success(),
        "sandbox exited {} after SIGINT:\n{tail}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tail.contains("stopping"), "{tail}");
    assert!(
        tail.contains("launcher exited: exit status: 0"),
        "the launcher did not stop cleanly:\n{tail}"
    );
}
