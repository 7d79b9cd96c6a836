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
