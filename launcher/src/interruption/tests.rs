//! Each cloud's source against a fake metadata server on loopback (wiremock), and the
//! watch loop on paused time with a scripted source.

use std::collections::VecDeque;
use std::time::Duration;

use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;

fn config(cloud: Cloud, server: &MockServer) -> WatchConfig {
    WatchConfig {
        cloud,
        poll_interval: Duration::from_millis(1),
        metadata_url: server.uri(),
    }
}

fn soon_rfc3339(secs: i64) -> String {
    let t = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap()
        + time::Duration::seconds(secs);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

const TOKEN_PATH: &str = "/latest/api/token";
const ACTION_PATH: &str = "/latest/meta-data/spot/instance-action";

async fn aws_token(server: &MockServer, token: &str, times: u64) {
    Mock::given(method("PUT"))
        .and(path(TOKEN_PATH))
        .and(header("X-aws-ec2-metadata-token-ttl-seconds", "21600"))
        .respond_with(ResponseTemplate::new(200).set_body_string(token))
        .up_to_n_times(times)
        .mount(server)
        .await;
}

#[tokio::test]
async fn aws_no_notice_is_a_404() {
    let server = MockServer::start().await;
    aws_token(&server, "tok-1", 1).await;
    Mock::given(method("GET"))
        .and(path(ACTION_PATH))
        .and(header("X-aws-ec2-metadata-token", "tok-1"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let mut src = source(&config(Cloud::Aws, &server)).unwrap();
    assert_eq!(src.poll().await, Ok(None));
    // The token is kept between polls (one PUT for two GETs).
    assert_eq!(src.poll().await, Ok(None));
    let puts = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "PUT")
        .count();
    assert_eq!(puts, 1);
}

#[tokio::test]
async fn aws_notice_carries_action_and_deadline() {
    let server = MockServer::start().await;
    aws_token(&server, "tok-1", 1).await;
    let at = soon_rfc3339(120);
    Mock::given(method("GET"))
        .and(path(ACTION_PATH))
        .and(header("X-aws-ec2-metadata-token", "tok-1"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string(format!(r#"{{"action": "terminate", "time": "{at}"}}"#)),
        )
        .mount(&server)
        .await;
    let n = source(&config(Cloud::Aws, &server))
        .unwrap()
        .poll()
        .await
        .unwrap()
        .expect("a notice");
    assert_eq!(n.notice.cloud, "aws");
    assert_eq!(n.notice.action, "terminate");
    assert_eq!(n.notice.deadline, at);
    assert!(
        n.remaining > Duration::from_secs(100) && n.remaining <= Duration::from_secs(120),
        "{:?}",
        n.remaining
    );
}

#[tokio::test]
async fn aws_error_then_notice() {
    let server = MockServer::start().await;
    aws_token(&server, "tok-1", 10).await;
    Mock::given(method("GET"))
        .and(path(ACTION_PATH))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    let past = "2020-01-01T00:00:00Z";
    Mock::given(method("GET"))
        .and(path(ACTION_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string(format!(r#"{{"action":"stop","time":"{past}"}}"#)),
        )
        .mount(&server)
        .await;
    let mut src = source(&config(Cloud::Aws, &server)).unwrap();
    let err = src.poll().await.unwrap_err();
    assert_eq!(
        err,
        MetadataError::Status {
            what: "spot/instance-action",
            status: 500
        }
    );
    let n = src.poll().await.unwrap().expect("a notice");
    assert_eq!(n.notice.action, "stop");
    // A deadline already past leaves no time, not a panic.
    assert_eq!(n.remaining, Duration::ZERO);
}

/// IMDS forgets tokens (expiry, restart): a 401 gets a fresh token and one retry, and the
/// token appears in no error.
#[tokio::test]
async fn aws_token_is_refreshed_after_a_401() {
    let server = MockServer::start().await;
    aws_token(&server, "old-t0ken", 1).await;
    aws_token(&server, "new-t0ken", 1).await;
    Mock::given(method("GET"))
        .and(path(ACTION_PATH))
        .and(header("X-aws-ec2-metadata-token", "old-t0ken"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(ACTION_PATH))
        .and(header("X-aws-ec2-metadata-token", "new-t0ken"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let mut src = source(&config(Cloud::Aws, &server)).unwrap();
    assert_eq!(src.poll().await, Ok(None));
    let gets: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "GET")
        .map(|r| {
            r.headers["x-aws-ec2-metadata-token"]
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(gets, ["old-t0ken", "new-t0ken"]);

    // Without a token at all, the error says what failed and never shows a token.
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path(TOKEN_PATH))
        .respond_with(ResponseTemplate::new(403))
        .mount(&server)
        .await;
    let err = source(&config(Cloud::Aws, &server))
        .unwrap()
        .poll()
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "metadata service answered 403 for the IMDSv2 token"
    );
}

const PREEMPTED: &str = "/computeMetadata/v1/instance/preempted";

async fn gcp_answers(server: &MockServer, body: &str, times: u64) {
    Mock::given(method("GET"))
        .and(path(PREEMPTED))
        .and(header("Metadata-Flavor", "Google"))
        .respond_with(ResponseTemplate::new(200).set_body_string(body))
        .up_to_n_times(times)
        .mount(server)
        .await;
}

#[tokio::test]
async fn gcp_false_then_error_then_true() {
    let server = MockServer::start().await;
    gcp_answers(&server, "FALSE", 1).await;
    Mock::given(method("GET"))
        .and(path(PREEMPTED))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    gcp_answers(&server, "TRUE", 1).await;
    let mut src = source(&config(Cloud::Gcp, &server)).unwrap();
    assert_eq!(src.poll().await, Ok(None));
    assert!(matches!(
        src.poll().await,
        Err(MetadataError::Status { status: 503, .. })
    ));
    let n = src.poll().await.unwrap().expect("a notice");
    assert_eq!(
        (n.notice.cloud.as_str(), n.notice.action.as_str()),
        ("gcp", "preempt")
    );
    // GCP gives no time: 30 s from the answer.
    assert!(
        n.remaining > Duration::from_secs(25) && n.remaining <= Duration::from_secs(30),
        "{:?}",
        n.remaining
    );
    time::OffsetDateTime::parse(
        &n.notice.deadline,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
}

#[tokio::test]
async fn gcp_garbage_is_an_error() {
    let server = MockServer::start().await;
    gcp_answers(&server, "<html>captive portal</html>", 1).await;
    let err = source(&config(Cloud::Gcp, &server))
        .unwrap()
        .poll()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expected TRUE or FALSE"), "{err}");
}

async fn azure_vm_name(server: &MockServer, name: &str) {
    Mock::given(method("GET"))
        .and(path("/metadata/instance/compute/name"))
        .and(query_param("format", "text"))
        .and(header("Metadata", "true"))
        .respond_with(ResponseTemplate::new(200).set_body_string(name))
        .mount(server)
        .await;
}

async fn azure_events(server: &MockServer, status: u16, body: &str, times: u64) {
    Mock::given(method("GET"))
        .and(path("/metadata/scheduledevents"))
        .and(query_param("api-version", "2020-07-01"))
        .and(header("Metadata", "true"))
        .respond_with(ResponseTemplate::new(status).set_body_string(body))
        .up_to_n_times(times)
        .mount(server)
        .await;
}

fn azure_event(kind: &str, vm: &str, not_before: &str) -> String {
    format!(
        r#"{{"DocumentIncarnation": 2, "Events": [{{"EventId": "E1", "EventType": "{kind}",
        "ResourceType": "VirtualMachine", "Resources": ["{vm}"], "EventStatus": "Scheduled",
        "NotBefore": "{not_before}", "Description": "", "EventSource": "Platform",
        "DurationInSeconds": -1}}]}}"#
    )
}

#[tokio::test]
async fn azure_none_error_other_vm_then_preempt() {
    let server = MockServer::start().await;
    azure_vm_name(&server, "worker-vm-3").await;
    azure_events(&server, 200, r#"{"DocumentIncarnation":1,"Events":[]}"#, 1).await;
    azure_events(&server, 500, "", 1).await;
    let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
    // A placement group's event for another VM, and a reboot for this one: not ours.
    azure_events(
        &server,
        200,
        &azure_event("Preempt", "worker-vm-7", &soon),
        1,
    )
    .await;
    azure_events(
        &server,
        200,
        &azure_event("Reboot", "worker-vm-3", &soon),
        1,
    )
    .await;
    azure_events(
        &server,
        200,
        &azure_event("Preempt", "worker-vm-3", &soon),
        1,
    )
    .await;
    let mut src = source(&config(Cloud::Azure, &server)).unwrap();
    assert_eq!(src.poll().await, Ok(None));
    assert!(matches!(
        src.poll().await,
        Err(MetadataError::Status { status: 500, .. })
    ));
    assert_eq!(src.poll().await, Ok(None));
    assert_eq!(src.poll().await, Ok(None));
    let n = src.poll().await.unwrap().expect("a notice");
    assert_eq!(
        (n.notice.cloud.as_str(), n.notice.action.as_str()),
        ("azure", "preempt")
    );
    assert!(
        n.remaining > Duration::from_secs(50) && n.remaining <= Duration::from_secs(60),
        "{:?}",
        n.remaining
    );
    assert!(n.notice.deadline.ends_with('Z'), "{}", n.notice.deadline);
}

#[tokio::test]
async fn nothing_listening_is_an_error_not_a_hang() {
    // A port nobody listens on (wiremock keeps its servers alive in a pool).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = WatchConfig {
        cloud: Cloud::Gcp,
        poll_interval: Duration::from_millis(1),
        metadata_url: format!("http://127.0.0.1:{port}"),
    };
    let err = source(&cfg).unwrap().poll().await.unwrap_err();
    assert!(matches!(err, MetadataError::Unreachable(_)), "{err:?}");
}

/// A source answering from a script; `None` left: no notice.
struct Scripted(VecDeque<Result<Option<Notice>, MetadataError>>);

#[async_trait]
impl NoticeSource for Scripted {
    async fn poll(&mut self) -> Result<Option<Notice>, MetadataError> {
        self.0.pop_front().unwrap_or(Ok(None))
    }
}

fn a_notice() -> Notice {
    Notice {
        notice: InterruptionNotice {
            cloud: "aws".into(),
            action: "terminate".into(),
            deadline: "2026-11-29T10:02:00Z".into(),
        },
        remaining: Duration::from_secs(120),
    }
}

#[tokio::test(start_paused = true)]
async fn watch_survives_errors_and_sends_the_first_notice_once() {
    let script = VecDeque::from([
        Ok(None),
        Err(MetadataError::Unreachable("connection refused".into())),
        Err(MetadataError::Unreachable("connection refused".into())),
        Ok(Some(a_notice())),
        Ok(Some(a_notice())),
    ]);
    let (tx, mut rx) = mpsc::channel(4);
    let t0 = tokio::time::Instant::now();
    let task = tokio::spawn(watch(
        Box::new(Scripted(script)),
        Duration::from_secs(5),
        tx,
    ));
    assert_eq!(rx.recv().await, Some(a_notice()));
    // Three polls before it, 5 s apart.
    assert_eq!(t0.elapsed(), Duration::from_secs(15));
    task.await.unwrap();
    assert_eq!(
        rx.recv().await,
        None,
        "one notice, then the watcher is done"
    );
}

#[test]
fn cloud_words() {
    assert_eq!(Cloud::parse("off"), Ok(None));
    assert_eq!(Cloud::parse("AWS"), Ok(Some(Cloud::Aws)));
    assert_eq!(Cloud::parse("gcp"), Ok(Some(Cloud::Gcp)));
    assert_eq!(Cloud::parse("azure"), Ok(Some(Cloud::Azure)));
    assert!(Cloud::parse("auto").is_err());
}
