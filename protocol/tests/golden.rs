//! Golden fixtures: one JSON file per message and body in `fixtures/`. Each must parse into
//! its type, serialize back to the same JSON, and still parse with an unknown field added.

use std::path::Path;

use protocol::api::*;
use protocol::messages::{ServerMessage, WorkerMessage};
use protocol::token::Token;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fn check<T: DeserializeOwned + Serialize + std::fmt::Debug + PartialEq>(name: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let golden: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let parsed: T =
        serde_json::from_value(golden.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        serde_json::to_value(&parsed).unwrap(),
        golden,
        "{name} round trip"
    );

    let mut extended = golden.clone();
    extended
        .as_object_mut()
        .expect("fixtures are objects")
        .insert("field_from_the_future".into(), Value::from(1));
    let tolerant: T = serde_json::from_value(extended).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(tolerant, parsed, "{name} with an unknown field");
}

#[test]
fn every_fixture_round_trips() {
    check::<Token>("token.json");
    for f in [
        "server.run_scheduled.json",
        "server.run_cancel.json",
        "server.worker_drain.json",
        "server.worker_undrain.json",
        "server.worker_cycle.json",
        "server.worker_binary_published.json",
    ] {
        check::<ServerMessage>(f);
    }
    check::<WorkerMessage>("worker.heartbeat.json");
    check::<WorkerMessage>("worker.heartbeat_interruption.json");
    check::<WorkerMessage>("worker.gone.json");
    check::<RegisterRequest>("api.register_request.json");
    check::<RegisterResponse>("api.register_response.json");
    check::<ClaimRequest>("api.claim_request.json");
    check::<ClaimResponse>("api.claim_response.json");
    check::<ClaimResponse>("api.claim_response_ansible.json");
    check::<ClaimResponse>("api.claim_response_with_binary.json");
    check::<LeaseRequest>("api.lease_request.json");
    check::<Lease>("api.lease.json");
    check::<TransitionRequest>("api.transition_request.json");
    check::<TransitionResponse>("api.transition_response.json");
    check::<LogBatch>("api.log_batch.json");
    check::<LogAck>("api.log_ack.json");
    check::<PolicySample>("api.policy_sample.json");
    check::<PolicySampleAck>("api.policy_sample_ack.json");
    check::<WorkerBinary>("api.worker_binary.json");
    check::<ErrorBody>("api.error_body.json");
}

#[test]
fn every_fixture_is_checked() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let on_disk = std::fs::read_dir(dir).unwrap().count();
    // Keep in step with `every_fixture_round_trips`: a new fixture must be checked there.
    assert_eq!(on_disk, 26);
}

/// The vendor is a compatible addition: an old backend's spec (no vendor) is "not
/// Ansible", and the Ansible spec names no image, so the launcher picks its default.
#[test]
fn run_spec_vendor_is_optional() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let read = |name: &str| -> ClaimResponse {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    };
    let old = read("api.claim_response.json");
    assert_eq!(old.run.vendor, None);
    assert!(!old.run.is_ansible());
    let ansible = read("api.claim_response_ansible.json");
    assert_eq!(ansible.run.vendor.as_deref(), Some(vendors::ANSIBLE));
    assert!(ansible.run.is_ansible());
    assert_eq!(ansible.run.image, None);
    assert_eq!(paths::policy_samples("01R"), "/v1/runs/01R/policy-samples");
}

/// The claim's worker binary is a compatible addition: an old backend's answer (none)
/// still parses, and the launcher then asks `GET /v1/worker-binaries/latest` as before.
#[test]
fn claim_worker_binary_is_optional() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let read = |name: &str| -> ClaimResponse {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    };
    assert_eq!(read("api.claim_response.json").worker_binary, None);
    let with = read("api.claim_response_with_binary.json");
    let binary = with.worker_binary.expect("the fixture carries a binary");
    assert_eq!(
        (binary.version.as_str(), binary.arch),
        ("0.0.2", protocol::Arch::Amd64)
    );
}

#[test]
fn token_fixture_decodes_through_base64() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/token.json");
    let token: Token = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(
        Token::decode("SPACELIFT_TOKEN", &token.encode()).unwrap(),
        token
    );
    assert_eq!(
        token.broker_host_port().unwrap(),
        ("127.0.0.1".to_string(), 8883)
    );
}
