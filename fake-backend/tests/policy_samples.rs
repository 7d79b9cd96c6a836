//! The protocol additions for issue 14: a run spec's `vendor`, and policy samples
//! (`POST /v1/runs/{run}/policy-samples`), stored per run and shown in the run view.

mod common;

use common::*;
use fake_backend::ScheduleRun;
use protocol::api::{error_codes, paths, policy_kinds, vendors, PolicySample, PolicySampleAck};
use protocol::RunState;
use serde_json::json;

fn sample(worker: &str, deny: &[&str]) -> PolicySample {
    PolicySample {
        worker_ulid: worker.into(),
        policy: policy_kinds::INITIALIZATION.into(),
        input: json!({"run": {"id": "R", "type": "TRACKED"}, "docker_image": "img:1"}),
        deny: deny.iter().map(|d| d.to_string()).collect(),
    }
}

#[tokio::test]
async fn a_vendor_reaches_the_claim_and_samples_are_stored_per_run() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let api = creds.http();
    let (w, mut m) = online_worker(&b, &creds, 2).await;

    // A run scheduled with a vendor and no image: the claim says so.
    let run = b
        .schedule_run(ScheduleRun::new(creds.pool()).vendor(vendors::ANSIBLE))
        .unwrap();
    let msg = m.next_message().await;
    assert_eq!(run_scheduled(&msg), Some(run.as_str()), "{msg:?}");
    let claim = api.claim(&run, &w).await.unwrap();
    assert_eq!(claim.run.vendor.as_deref(), Some(vendors::ANSIBLE));
    assert_eq!(claim.run.image, None);
    // Without one, the spec has none (what an old backend sends).
    let plain = b.schedule_run(ScheduleRun::new(creds.pool())).unwrap();
    assert_eq!(b.run(&plain).unwrap().spec.vendor, None);

    // Only the holder sends samples.
    let other = api.register(1, None).await.worker_ulid;
    let refused = api
        .post::<_, PolicySampleAck>(&paths::policy_samples(&run), &sample(&other, &[]))
        .await
        .unwrap_err();
    assert_eq!(refused.status, 409);
    assert!(b.run(&run).unwrap().policy_samples.is_empty());

    let _: PolicySampleAck = api
        .post(&paths::policy_samples(&run), &sample(&w, &[]))
        .await
        .unwrap();
    // A repeat (a retried upload) replaces it: one sample per run and policy.
    let _: PolicySampleAck = api
        .post(&paths::policy_samples(&run), &sample(&w, &["no"]))
        .await
        .unwrap();
    let view = b.run(&run).unwrap();
    assert_eq!(view.policy_samples, vec![sample(&w, &["no"])]);
    assert!(b
        .events()
        .iter()
        .any(|e| e.kind == "policy.sampled" && e.run.as_deref() == Some(run.as_str())));

    // Accepted after the run ended, like trailing logs.
    api.transition(&run, &w, RunState::Failed, None)
        .await
        .unwrap();
    let _: PolicySampleAck = api
        .post(&paths::policy_samples(&run), &sample(&w, &["late"]))
        .await
        .unwrap();
    assert_eq!(b.run(&run).unwrap().policy_samples[0].deny, ["late"]);

    // Bad bodies: not a sample (400), too large (413), unknown run (404).
    let bad = api
        .post::<_, PolicySampleAck>(&paths::policy_samples(&run), &json!({"worker_ulid": w}))
        .await
        .unwrap_err();
    assert_eq!(bad.status, 400);
    let huge = "x".repeat(fake_backend::MAX_BODY);
    let big = api
        .post::<_, PolicySampleAck>(&paths::policy_samples(&run), &sample(&w, &[&huge]))
        .await
        .unwrap_err();
    assert_eq!(big.status, 413);
    assert_eq!(big.body.unwrap().error.code, error_codes::PAYLOAD_TOO_LARGE);
    let missing = api
        .post::<_, PolicySampleAck>(&paths::policy_samples("NORUN"), &sample(&w, &[]))
        .await
        .unwrap_err();
    assert_eq!(missing.status, 404);
    assert_eq!(b.run(&run).unwrap().policy_samples[0].deny, ["late"]);

    m.stop().await;
    b.shutdown().await;
}

#[tokio::test]
async fn the_admin_api_schedules_a_vendor_and_shows_samples_which_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let creds = new_pool(&b).await;
    let api = creds.http();
    let (w, mut m) = online_worker(&b, &creds, 1).await;
    let addr = b.admin_addr().unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let created: serde_json::Value = http
        .post(format!("http://{addr}/runs"))
        .json(&json!({"pool": creds.pool(), "vendor": "ansible"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run = created["run_ulid"].as_str().unwrap().to_string();
    m.next_message().await;
    assert_eq!(
        api.claim(&run, &w).await.unwrap().run.vendor.as_deref(),
        Some(vendors::ANSIBLE)
    );
    let _: PolicySampleAck = api
        .post(&paths::policy_samples(&run), &sample(&w, &[]))
        .await
        .unwrap();
    let view: serde_json::Value = http
        .get(format!("http://{addr}/runs/{run}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["spec"]["vendor"], "ansible");
    assert_eq!(
        view["policy_samples"],
        json!([serde_json::to_value(sample(&w, &[])).unwrap()])
    );
    m.stop().await;
    b.shutdown().await;

    let b = start(dir.path()).await;
    let view = b.run(&run).unwrap();
    assert_eq!(view.policy_samples, vec![sample(&w, &[])]);
    assert_eq!(view.spec.vendor.as_deref(), Some(vendors::ANSIBLE));
    b.shutdown().await;
}
