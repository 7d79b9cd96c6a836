//! The three metadata services. Each poll is one or two small GETs; the wall clock is read
//! here (to turn the cloud's deadline into time left), never in the core.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use protocol::messages::InterruptionNotice;
use reqwest::StatusCode;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{MetadataError, Notice, NoticeSource};
use crate::secret::{ExposeSecret, SecretString};

/// GCP says nothing but "preempted", and documents 30 s from then.
pub const SHORT_NOTICE: Duration = Duration::from_secs(30);

fn unreachable(e: reqwest::Error) -> MetadataError {
    // reqwest's errors name the URL, never the request's headers.
    MetadataError::Unreachable(e.without_url().to_string())
}

fn notice(cloud: &str, action: &str, at: SystemTime) -> Notice {
    let remaining = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    let utc = OffsetDateTime::from(at)
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::from(at));
    Notice {
        notice: InterruptionNotice {
            cloud: cloud.into(),
            action: action.into(),
            deadline: utc.format(&Rfc3339).unwrap_or_else(|_| utc.to_string()),
        },
        remaining,
    }
}

async fn text(resp: reqwest::Response, what: &'static str) -> Result<String, MetadataError> {
    match resp.status() {
        StatusCode::OK => resp.text().await.map_err(unreachable),
        s => Err(MetadataError::Status {
            what,
            status: s.as_u16(),
        }),
    }
}

// ---------------------------------------------------------------------------------------
// EC2: IMDSv2

/// The session token's lifetime asked for (the maximum, 6 h); renewed a while before.
const TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);
const TOKEN_RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// EC2's `spot/instance-action`, read with an IMDSv2 session token (PUT `api/token`). The
/// token is renewed before it expires and whenever IMDS answers 401; it is never logged.
pub struct Aws {
    http: reqwest::Client,
    base: String,
    token: Option<(SecretString, tokio::time::Instant)>,
}

#[derive(Deserialize)]
struct InstanceAction {
    action: String,
    time: String,
}

impl Aws {
    pub fn new(http: reqwest::Client, base: String) -> Aws {
        Aws {
            http,
            base,
            token: None,
        }
    }

    async fn token(&mut self) -> Result<SecretString, MetadataError> {
        if let Some((t, renew_at)) = &self.token {
            if tokio::time::Instant::now() < *renew_at {
                return Ok(t.clone());
            }
        }
        let resp = self
            .http
            .put(format!("{}/latest/api/token", self.base))
            .header(
                "X-aws-ec2-metadata-token-ttl-seconds",
                TOKEN_TTL.as_secs().to_string(),
            )
            .send()
            .await
            .map_err(unreachable)?;
        let token = SecretString::from(text(resp, "the IMDSv2 token").await?.trim().to_string());
        let renew_at = tokio::time::Instant::now() + (TOKEN_TTL - TOKEN_RENEW_BEFORE);
        self.token = Some((token.clone(), renew_at));
        Ok(token)
    }
}

#[async_trait]
impl NoticeSource for Aws {
    async fn poll(&mut self) -> Result<Option<Notice>, MetadataError> {
        // A 401 means the token expired or IMDS restarted: one fresh token, then give up
        // until the next poll.
        for _ in 0..2 {
            let token = self.token().await?;
            let resp = self
                .http
                .get(format!(
                    "{}/latest/meta-data/spot/instance-action",
                    self.base
                ))
                .header("X-aws-ec2-metadata-token", token.expose_secret())
                .send()
                .await
                .map_err(unreachable)?;
            match resp.status() {
                StatusCode::NOT_FOUND => return Ok(None),
                StatusCode::UNAUTHORIZED => {
                    self.token = None;
                    continue;
                }
                _ => {}
            }
            let body = text(resp, "spot/instance-action").await?;
            let malformed = |detail: String| MetadataError::Malformed {
                what: "spot/instance-action",
                detail,
            };
            let a: InstanceAction =
                serde_json::from_str(&body).map_err(|e| malformed(e.to_string()))?;
            let at = OffsetDateTime::parse(&a.time, &Rfc3339)
                .map_err(|e| malformed(format!("time {:?}: {e}", a.time)))?;
            return Ok(Some(notice("aws", &a.action, at.into())));
        }
        Err(MetadataError::Status {
            what: "spot/instance-action (with a fresh token)",
            status: 401,
        })
    }
}

// ---------------------------------------------------------------------------------------
// GCP

/// GCP's `instance/preempted`: `TRUE` once the instance is being preempted.
pub struct Gcp {
    http: reqwest::Client,
    base: String,
}

impl Gcp {
    pub fn new(http: reqwest::Client, base: String) -> Gcp {
        Gcp { http, base }
    }
}

#[async_trait]
impl NoticeSource for Gcp {
    async fn poll(&mut self) -> Result<Option<Notice>, MetadataError> {
        let resp = self
            .http
            .get(format!(
                "{}/computeMetadata/v1/instance/preempted",
                self.base
            ))
            .header("Metadata-Flavor", "Google")
            .send()
            .await
            .map_err(unreachable)?;
        let body = text(resp, "instance/preempted").await?;
        match body.trim() {
            "TRUE" => Ok(Some(notice(
                "gcp",
                "preempt",
                SystemTime::now() + SHORT_NOTICE,
            ))),
            "FALSE" => Ok(None),
            other => Err(MetadataError::Malformed {
                what: "instance/preempted",
                detail: format!("expected TRUE or FALSE, got {:?}", truncate(other)),
            }),
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

// ---------------------------------------------------------------------------------------
// Azure

const SCHEDULED_EVENTS: &str = "/metadata/scheduledevents?api-version=2020-07-01";
const VM_NAME: &str = "/metadata/instance/compute/name?api-version=2021-02-01&format=text";

/// Azure's Scheduled Events: a `Preempt` event naming this VM (events of a scale set's
/// placement group reach every VM in it, so `Resources` is checked against the VM's name,
/// read once from the instance metadata). Events are never acknowledged: acknowledging
/// would let Azure evict sooner.
pub struct Azure {
    http: reqwest::Client,
    base: String,
    vm_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ScheduledEvents {
    #[serde(default)]
    events: Vec<ScheduledEvent>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ScheduledEvent {
    event_type: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    not_before: String,
}

impl Azure {
    pub fn new(http: reqwest::Client, base: String) -> Azure {
        Azure {
            http,
            base,
            vm_name: None,
        }
    }

    async fn get(&self, path: &str, what: &'static str) -> Result<String, MetadataError> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("Metadata", "true")
            .send()
            .await
            .map_err(unreachable)?;
        text(resp, what).await
    }
}

#[async_trait]
impl NoticeSource for Azure {
    async fn poll(&mut self) -> Result<Option<Notice>, MetadataError> {
        let name = match &self.vm_name {
            Some(n) => n.clone(),
            None => {
                let n = self.get(VM_NAME, "compute/name").await?.trim().to_string();
                self.vm_name = Some(n.clone());
                n
            }
        };
        let body = self.get(SCHEDULED_EVENTS, "scheduledevents").await?;
        let doc: ScheduledEvents =
            serde_json::from_str(&body).map_err(|e| MetadataError::Malformed {
                what: "scheduledevents",
                detail: e.to_string(),
            })?;
        let ours = doc.events.into_iter().find(|e| {
            e.event_type == "Preempt"
                && (e.resources.is_empty()
                    || e.resources.iter().any(|r| r.eq_ignore_ascii_case(&name)))
        });
        Ok(ours.map(|e| {
            // NotBefore is an HTTP date ("Mon, 19 Sep 2016 18:29:47 GMT"); empty once the
            // event has started, which means now.
            let at = httpdate::parse_http_date(e.not_before.trim())
                .unwrap_or_else(|_| SystemTime::now());
            notice("azure", "preempt", at)
        }))
    }
}
