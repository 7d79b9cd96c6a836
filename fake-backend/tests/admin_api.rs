//! The admin API over plain HTTP: routes, `GET /events?since=N`, and clear errors.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn admin_routes_work_and_reject_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path()).await;
    let addr = b.admin_addr().unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("admin.addr")).unwrap(),
        addr.to_string()
    );
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = |p: &str| format!("http://{addr}{p}");

    let creds: Value = http
        .post(url("/pools"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pool = creds["pool_ulid"].as_str().unwrap().to_string();
    assert!(creds["private_key_b64"].is_string());
    let run: Value = http
        .post(url("/runs"))
        .json(&json!({"pool": pool, "env": {"SPACELIFT_TEST_SLEEP": "1"}, "run_type": "proposed"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run = run["run_ulid"].as_str().unwrap().to_string();
    let view: Value = http
        .get(url(&format!("/runs/{run}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["state"], "scheduled");
    assert_eq!(view["spec"]["run_type"], "proposed");
    let v: Value = http
        .post(url("/versions"))
        .json(&json!({"arch": "arm64", "kind": "elf"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["arch"], "arm64");

    let since = b.last_seq() - 1;
    let evs: Vec<Value> = http
        .get(url(&format!("/events?since={since}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["kind"], "binary.published");
    let evs: Vec<Value> = http
        .get(url("/events?kind=run."))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(evs
        .iter()
        .all(|e| e["kind"].as_str().unwrap().starts_with("run.")));

    for (method, path, body, status) in [
        ("POST", "/runs", "not json", 400),
        (
            "POST",
            "/runs",
            r#"{"pool":"01NOSUCHPOOL0000000000000"}"#,
            404,
        ),
        ("POST", "/faults", r#"{"type":"meteor_strike"}"#, 400),
        (
            "POST",
            "/faults",
            r#"{"type":"drop_connection","worker":"nobody"}"#,
            404,
        ),
        ("POST", "/workers/nobody/drain", "", 404),
        ("POST", "/versions", r#"{"arch":"s390x"}"#, 400),
        ("POST", "/pools", r#"{"csr_pem":"garbage"}"#, 400),
        ("GET", "/events?since=abc", "", 400),
        ("GET", "/nowhere", "", 404),
    ] {
        let resp = http
            .request(method.parse().unwrap(), url(path))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        let err: Value = resp.json().await.unwrap();
        assert!(
            err["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{method} {path}: {err}"
        );
    }
    b.shutdown().await;
}
