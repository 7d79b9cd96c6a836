//! The initialization policy's `sample` rule and the run's image choice, end to end
//! against the in-memory adapters on paused time: what reaches the backend.

use protocol::api::{policy_kinds, reason_codes, vendors, PolicySample, RunType};
use protocol::RunState::*;

use crate::init_policy::{InitPolicy, PolicyInput};
use crate::testing::*;

fn policy(src: &str) -> Option<std::sync::Arc<InitPolicy>> {
    let p = InitPolicy::from_source(std::path::Path::new("/etc/init.rego"), src)
        .expect("a valid policy");
    Some(std::sync::Arc::new(p))
}

/// The input the launcher evaluates for [`spec`]`(run)` with the test binary (1.0.0).
fn expected_input(run: &str, image: &str) -> serde_json::Value {
    let i = PolicyInput::new(
        run,
        RunType::Tracked,
        &format!("stack-{run}"),
        image,
        "1.0.0",
    );
    serde_json::to_value(i).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_sample_only_policy_allows_the_run_and_its_input_reaches_the_backend() {
    let mut h = Harness::new();
    h.settings.init_policy = policy("package spacelift\n\nsample { true }\n");
    // Secrets the run and the launcher hold: none may be part of the sample.
    h.settings.masked_values = vec!["masked-s3cret".into()];
    h.backend.with(|s| {
        let mut r1 = spec("R1");
        r1.env
            .insert("TF_VAR_password".into(), "stack-s3cret".into());
        s.specs.insert("R1".into(), r1);
        // The first uploads fail: the sample waits in the outbox, then arrives.
        s.report_transient = 3;
    });
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    assert_eq!(h.backend.states("R1"), [Preparing, Running, Finished]);
    let samples = h.backend.policy_samples("R1");
    assert_eq!(
        samples,
        [PolicySample {
            worker_ulid: h.ids.worker_ulid.clone(),
            policy: policy_kinds::INITIALIZATION.into(),
            input: expected_input("R1", crate::DEFAULT_RUNNER_IMAGE),
            deny: vec![],
        }]
    );
    let text = serde_json::to_string(&samples).unwrap();
    for secret in ["masked-s3cret", "stack-s3cret", "TF_VAR_password"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_denied_run_sends_its_sample_before_failing() {
    let mut h = Harness::new();
    h.settings.init_policy = policy(
        "package spacelift\n\ndeny[\"no destroys\"] { input.run.type == \"DESTROY\" }\n\
         deny[\"stack R1 is frozen\"] { input.static_run_environment.stack_slug == \"stack-R1\" }\n\
         sample { count(deny) > 0 }\n",
    );
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    assert_eq!(h.backend.states("R1"), [Preparing, Failed]);
    let last = h.backend.last("R1").unwrap();
    assert_eq!(
        last.reason.unwrap().code,
        reason_codes::INITIALIZATION_POLICY_DENIED
    );
    let samples = h.backend.policy_samples("R1");
    assert_eq!(samples.len(), 1, "{samples:?}");
    assert_eq!(samples[0].deny, ["stack R1 is frozen"]);
    assert_eq!(
        samples[0].input,
        expected_input("R1", crate::DEFAULT_RUNNER_IMAGE)
    );

    // An allowed run is not sampled here (sample is false for it): nothing is sent.
    r.schedule("R2").await;
    h.until_terminal("R2").await;
    assert_eq!(h.backend.states("R2"), [Preparing, Running, Finished]);
    assert!(h.backend.policy_samples("R2").is_empty());
    assert_eq!(h.backend.peek(|s| s.policy_samples.len()), 1);
}

#[tokio::test(start_paused = true)]
async fn an_ansible_run_without_an_image_uses_the_ansible_default() {
    let mut h = Harness::new();
    h.settings.default_ansible_runner_image = "my/ansible:1".into();
    h.settings.init_policy = policy("package spacelift\nsample { true }\n");
    h.backend.with(|s| {
        for run in ["R1", "R2"] {
            let mut spec = spec(run);
            spec.vendor = Some(vendors::ANSIBLE.into());
            s.specs.insert(run.into(), spec);
        }
        s.specs.get_mut("R2").unwrap().image = Some("own/ansible:2".into());
    });
    h.runtime.with(|s| {
        s.registry.insert("my/ansible:1".into(), image("amd64"));
        s.registry.insert("own/ansible:2".into(), image("amd64"));
    });
    let mut r = h.start();
    r.schedule("R1").await;
    h.until_terminal("R1").await;
    r.schedule("R2").await;
    h.until_terminal("R2").await;
    for run in ["R1", "R2"] {
        assert_eq!(h.backend.states(run), [Preparing, Running, Finished]);
    }
    let calls = h.runtime.calls();
    assert!(
        calls.contains(&"pull my/ansible:1 linux/amd64".to_string()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"pull own/ansible:2 linux/amd64".to_string()),
        "{calls:?}"
    );
    // The policy saw the image the run used.
    assert_eq!(
        h.backend.policy_samples("R1")[0].input["docker_image"],
        "my/ansible:1"
    );
}
